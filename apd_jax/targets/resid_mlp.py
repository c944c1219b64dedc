"""Residual MLP for compressed computation: 100 functions on 50 neurons.

.. math::  h_0 = x W_E, \\quad h_{l+1} = h_l + ReLU(h_l W^{in}_l) W^{out}_l,
           \\quad ŷ = h_L W_E^T

`W_E: [n_features, d_resid]` is a fixed random embedding with unit-norm rows
and the unembedding is its transpose; the MLPs (`d_mlp` neurons split evenly
across `n_layers`, no biases) are trained so that `ŷ_i ≈ x_i + ReLU(x_i)`.
Data: each feature independently active with probability p, value
`U[-1, 1]`. `apply` returns the output and, by name, each MLP's input
(`['layers'][l]['W_in']`), its post-ReLU activations (`['layers'][l]['W_out']`,
the input of `W_out`, also under `post_relu_<l>`), for activation
attributions and hidden-activation reconstruction.

The end of the module makes it a command-line target (config, report).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from apd_jax.analysis import features
from apd_jax.analysis import plotting
from apd_jax.targets import fit as training
from apd_jax.training import optim

Array = jax.Array


def init(key: Array, *, n_features: int = 100, d_resid: int = 1000,
         d_mlp: int = 50, n_layers: int = 1) -> dict:
  """Unit-norm random `W_E`; Kaiming-uniform `W_in`, `W_out` per layer."""
  if d_mlp % n_layers:
    raise ValueError(f"d_mlp={d_mlp} does not split over {n_layers} layers")
  width = d_mlp // n_layers
  k_embed, *k_layers = jax.random.split(key, 1 + 2 * n_layers)
  W_E = jax.random.normal(k_embed, (n_features, d_resid))
  W_E = W_E / jnp.linalg.norm(W_E, axis=1, keepdims=True)

  def uniform(k, fan_in, shape):
    bound = 1.0 / fan_in ** 0.5
    return jax.random.uniform(k, shape, minval=-bound, maxval=bound)

  layers = [{"W_in": uniform(k_layers[2 * j], d_resid, (d_resid, width)),
             "W_out": uniform(k_layers[2 * j + 1], width, (width, d_resid))}
            for j in range(n_layers)]
  return {"W_E": W_E, "layers": layers}


def apply(params: dict, x: Array) -> tuple[Array, dict[str, Array]]:
  """`(ŷ [B, n_features], activations)` for a batch `x [B, n_features]`."""
  h = x @ params["W_E"]
  acts = {}
  for j, layer in enumerate(params["layers"]):
    mid = jax.nn.relu(h @ layer["W_in"])
    acts[f"['layers'][{j}]['W_in']"] = h
    acts[f"['layers'][{j}]['W_out']"] = mid
    acts[f"post_relu_{j}"] = mid
    h = h + mid @ layer["W_out"]
  return h @ params["W_E"].T, acts


def output(params: dict, x: Array) -> Array:
  """`ŷ` alone."""
  return apply(params, x)[0]


def labels(x: Array) -> Array:
  """The target function, `y_i = x_i + ReLU(x_i)` per feature."""
  return x + jax.nn.relu(x)


def sample(key: Array, batch_size: int, *, n_features: int,
           feature_probability: float) -> Array:
  """Sparse features: each on with prob. p, value `U[-1, 1]`: `[B, n]`."""
  k_on, k_val = jax.random.split(key)
  on = jax.random.uniform(k_on, (batch_size, n_features)) < feature_probability
  value = jax.random.uniform(k_val, (batch_size, n_features), minval=-1.0,
                             maxval=1.0)
  return jnp.where(on, value, 0.0)


def sampler(*, n_features: int, feature_probability: float):
  """`sample_fn(key, batch_size)` for `decompose`."""
  return functools.partial(sample, n_features=n_features,
                           feature_probability=feature_probability)


def train(key: Array, *, n_features: int = 100, d_resid: int = 1000,
          d_mlp: int = 50, n_layers: int = 1,
          feature_probability: float = 0.01, steps: int = 10_000,
          batch_size: int = 2048, lr: float = 3e-3,
          weight_decay: float = 0.01) -> tuple[dict, Array]:
  """Trains the MLPs (AdamW, cosine schedule, MSE to `labels`); `W_E` fixed.

  Returns:
    `(params, losses [steps])`.
  """
  init_key, data_key = jax.random.split(key)
  params = init(init_key, n_features=n_features, d_resid=d_resid,
                d_mlp=d_mlp, n_layers=n_layers)
  W_E = params["W_E"]
  opt = optax.adamw(optim.schedule(lr, steps, kind="cosine"),
                    weight_decay=weight_decay)
  draw = sampler(n_features=n_features, feature_probability=feature_probability)

  def loss(layers, x):
    y = output({"W_E": W_E, "layers": layers}, x)
    return jnp.mean((y - labels(x)) ** 2)

  layers, values = training.fit(loss, params["layers"], opt, draw, data_key,
                                steps=steps, batch_size=batch_size)
  return {"W_E": W_E, "layers": layers}, values


# -- as a command-line target (`config.target.name = "resid_mlp"`) ------------

HAS_AUX = True
METRICS = ("features_recovered", "distinct_best_components",
           "mean_best_cosine")
SELECT = ("topk_recon", "min")
SUCCESS = None
ARCH = ("n_features", "d_resid", "d_mlp", "n_layers")
TRAIN = ("feature_probability", "steps", "batch_size", "lr", "weight_decay")


SAMPLER = ("n_features", "feature_probability")


def configure(c, n_layers: int) -> None:
  """The residual-MLP configs' shared settings on `c`: the target and the
  paper's options."""
  c.target = ml_collections.ConfigDict(dict(
      name="resid_mlp",
      path="",                   # load params from this msgpack file if set
      n_features=100, d_resid=1000,
      d_mlp=51 if n_layers == 3 else 50,   # split evenly over the layers
      n_layers=n_layers,
      feature_probability=0.01,
      steps=5000, batch_size=2048, lr=3e-3, weight_decay=0.01))
  c.include = "W_in|W_out"       # every layer's MLP; not embeddings
  c.batch_size = 2048
  c.lr = 1e-3
  c.lr_schedule = "cosine"
  c.warmup_frac = 0.01


# The APD paper's options on these models (`c.method.update(APD_OPTIONS)`):
# full rank min(i, o) as the reference, top-k 1.28, p 0.9, the MLPs'
# post-ReLU activations reconstructed too.
APD_OPTIONS = dict(rank=None, topk=1.28, schatten_p=0.9, hidden_act_coeff=1.0,
                   hidden_acts="post_relu", init_gain=2.0)


def variants(c, *, rank1: bool = False, quick: bool = False) -> None:
  """`rank1`: rank-1 components; `quick`: a 1k-step smoke run."""
  if rank1:
    c.method.rank = 1
  if quick:
    c.steps = 1000
    c.log_every = 50
    c.print_every = 250
    c.target.steps = 1000


def report(result, sample_fn, workdir: str, *, seed: int, batch_size: int,
           eval_batches: int = 4, figures: bool = True, **_) -> dict:
  """Feature recovery and scrubbing (`analysis/features.py`), with their
  figures and arrays, where components span the matrices (APD); where each
  group of components is one matrix's (SPD), each feature's own `W_in`
  subcomponent. Scrubbing runs on `min(4, eval_batches)` fresh batches;
  `figures=False` writes no PNG."""
  if all(len(leaves) == 1 for leaves in result.groups.values()):
    return spd_report(result, workdir, figures)
  summary, d = features.evaluate_residual(
      result, sample_fn, jax.random.PRNGKey(seed + 1),
      labels_fn=labels, batch_size=batch_size,
      n_batches=min(4, eval_batches))
  n = len(d["best"])
  if figures:
    plotting.plot_contributions(
        d["kappa"], d["comp_kappa"][d["best"], np.arange(n)], d["cosine"],
        os.path.join(workdir, "contributions.png"))
    plotting.plot_scrubbing(d["losses"],
                            os.path.join(workdir, "scrubbing.png"))
  np.savez(os.path.join(workdir, "analysis.npz"), kappa=d["kappa"],
           best=d["best"], cosine=d["cosine"],
           **{f"loss_{k}": v for k, v in d["losses"].items()})
  return summary


def spd_report(result, workdir: str, figures: bool = True) -> dict:
  """Per-matrix components (SPD): features with their own `W_in`
  subcomponent (cosine >= 0.9 of the neuron contributions), the figure of
  contributions and the scores on one-hot inputs."""
  rec = features.spd_recovery(result)
  if figures:
    G = result.scores(jnp.eye(rec["n_features"]))
    plotting.plot_causal_importances(
        G, os.path.join(workdir, "causal_importances.png"),
        xlabel="input feature (one-hot)")
    plotting.plot_contributions(rec["kappa"], rec["own"], rec["cosine"],
                                os.path.join(workdir, "contributions.png"))
  np.savez(os.path.join(workdir, "analysis.npz"), kappa_in=rec["kappa"],
           own=rec["own"], best=rec["best"], cosine=rec["cosine"])
  return dict(features_recovered=rec["n_recovered"],
              features_with_own_subcomponent=rec["n_own"],
              n_features=rec["n_features"],
              mean_best_cosine=float(np.mean(rec["cosine"])))
