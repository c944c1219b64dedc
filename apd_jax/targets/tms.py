"""Toy model of superposition (TMS): `x̂ = ReLU(Wᵀ W x + b)`.

`W: [n_hidden, n_features]` is one leaf used twice (down, then up), so its
components are shared by both uses; `untied` gives the up use its own leaf
`W_up`, equal to `W` (the same function, trained tied), so that each use
is decomposed on its own (as the VPD authors do). Optional `[n_hidden,
n_hidden]` hidden layers, initialised to the identity and kept fixed in
target training, sit between the two uses. Data: each feature
independently active with probability p, value `U[0, 1]`, generated on
device from a key.

The end of the module makes it a command-line target: how a config builds
it, its variants, and its report (MMCS, ML2R, the component figure).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from apd_jax.analysis import plotting
from apd_jax.core import metrics as metrics_lib
from apd_jax.targets import fit as training

Array = jax.Array


def init(key: Array, *, n_features: int, n_hidden: int,
         n_hidden_layers: int = 0, untied: bool = False) -> dict:
  """Xavier-normal `W`, zero bias, identity hidden layers (`untied`: and
  `W_up = W`)."""
  std = (2.0 / (n_features + n_hidden)) ** 0.5
  params = {"W": std * jax.random.normal(key, (n_hidden, n_features)),
            "b_final": jnp.zeros((n_features,))}
  if n_hidden_layers:
    params["hidden"] = [jnp.eye(n_hidden) for _ in range(n_hidden_layers)]
  return untie(params) if untied else params


def untie(params: dict) -> dict:
  """`params` with the up use's own leaf `W_up`, a copy of `W`."""
  return {**params, "W_up": jnp.array(params["W"])}


def apply(params: dict, x: Array) -> Array:
  """`ReLU(((x Wᵀ) H_1 … H_L) W_up + b)` for a batch `x [B, n_features]`
  (`W_up` is `W` unless untied)."""
  h = x @ params["W"].T
  for layer in params.get("hidden", []):
    h = h @ layer
  return jax.nn.relu(h @ params.get("W_up", params["W"]) + params["b_final"])


def sample(key: Array, batch_size: int, *, n_features: int,
           feature_probability: float) -> Array:
  """Sparse features: each on with prob. p, value `U[0, 1]`: `[B, n]`."""
  k_on, k_val = jax.random.split(key)
  on = jax.random.uniform(k_on, (batch_size, n_features)) < feature_probability
  return jnp.where(on, jax.random.uniform(k_val, (batch_size, n_features)), 0.)


def sampler(*, n_features: int, feature_probability: float):
  """`sample_fn(key, batch_size)` for `decompose`."""
  return functools.partial(sample, n_features=n_features,
                           feature_probability=feature_probability)


def train(key: Array, *, n_features: int, n_hidden: int,
          n_hidden_layers: int = 0, feature_probability: float = 0.05,
          steps: int = 5000, batch_size: int = 1024, lr: float = 5e-3,
          weight_decay: float = 0.01, untied: bool = False
          ) -> tuple[dict, Array]:
  """Trains a TMS target with AdamW on MSE; the hidden layers stay fixed.
  It is trained tied; `untied` then copies `W` to `W_up` (`untie`).

  Returns:
    `(params, losses [steps])`.
  """
  init_key, data_key = jax.random.split(key)
  params = init(init_key, n_features=n_features, n_hidden=n_hidden,
                n_hidden_layers=n_hidden_layers)
  fixed = {k: v for k, v in params.items() if k == "hidden"}
  trained = {k: v for k, v in params.items() if k != "hidden"}
  opt = optax.adamw(lr, weight_decay=weight_decay)
  draw = sampler(n_features=n_features, feature_probability=feature_probability)

  def loss(p, x):
    return jnp.mean((apply({**p, **fixed}, x) - x) ** 2)

  trained, values = training.fit(loss, trained, opt, draw, data_key,
                                 steps=steps, batch_size=batch_size)
  params = {**trained, **fixed}
  return (untie(params) if untied else params), values


# -- as a command-line target (`config.target.name = "tms"`) ------------------

HAS_AUX = False
METRICS = ("mmcs", "ml2r")      # its measures of success, for sweeps
SELECT = ("mmcs", "max")        # the best run of a sweep
SUCCESS = "mmcs"                # with seeds swept: success = MMCS >= threshold
ARCH = ("n_features", "n_hidden", "n_hidden_layers", "untied")
TRAIN = ("feature_probability", "steps", "batch_size", "lr", "weight_decay")


SAMPLER = ("n_features", "feature_probability")


def variants(c, *, identity: bool = False, quick: bool = False,
             untied: bool = False) -> None:
  """The TMS configs' shared variants: `identity` (an identity hidden layer
  between W and Wᵀ, decomposed too), `quick` (a 2k-step smoke run),
  `untied` (`W`'s two uses decomposed as two matrices)."""
  c.sweep.select, c.sweep.select_mode = SELECT
  c.target.untied = untied
  if identity:
    c.target.n_hidden_layers = 1
    c.include = r"\['W(_up)?'\]|\['hidden'\]"
  if quick:
    c.steps = 2000
    c.log_every = 100
    c.print_every = 500


def report(result, sample_fn, workdir: str, *, t: dict, figures: bool = True,
           **_) -> dict:
  """MMCS and ML2R of `W`; the component figure, of the components of `W`
  with a norm above 10% of the largest; each component's score on one-hot
  inputs (`<score name>s.png`, e.g. `causal_importances.png`). Untied: the
  same of `W_up` as `mmcs_up`, `ml2r_up`, and `mmcs`, `ml2r` the worse of
  the two uses' (the lower MMCS, the ML2R farther from 1). SPD and VPD:
  `identity_ci_errors`, the VPD authors' check summed over `W`'s uses
  (0: each feature has a subcomponent of its own in each). `figures=False`
  writes no PNG."""
  del sample_fn
  W = result.target.params["W"]
  P = result.component_weights["['W']"]
  out = dict(mmcs=float(metrics_lib.mmcs(W, P)),
             ml2r=float(metrics_lib.ml2r(W, P)))
  if "['W_up']" in result.component_weights:
    up = result.component_weights["['W_up']"]
    out.update(mmcs_up=float(metrics_lib.mmcs(W, up)),
               ml2r_up=float(metrics_lib.ml2r(W, up)))
    out = dict(out, mmcs=min(out["mmcs"], out["mmcs_up"]),
               ml2r=max(out["ml2r"], out["ml2r_up"],
                        key=lambda r: abs(r - 1.0)))
  if result.method.SCORE_NAME == "causal importance":
    # The VPD authors' check (`metrics.identity_ci_errors`) on the products
    # of W's uses; an identity layer's subcomponents serve many features.
    probes = result.scores(0.75 * jnp.eye(W.shape[1]))
    out["identity_ci_errors"] = sum(
        metrics_lib.identity_ci_errors(ci) for k, ci in probes.items()
        if not k.startswith("['hidden']"))
  if not figures:
    return out
  norms = np.linalg.norm(np.asarray(P).reshape(P.shape[0], -1), axis=1)
  P = P[norms > 0.1 * norms.max()]
  name = result.method.SCORE_NAME.replace(" ", "_")
  plotting.plot_causal_importances(
      result.scores(jnp.eye(W.shape[1])),
      os.path.join(workdir, f"{name}s.png"),
      threshold=getattr(result.method, "threshold", 0.0),
      xlabel="input feature (one-hot)")
  plotting.plot_columns(
      W, P, os.path.join(workdir, "components.png"),
      title=f"TMS {t['n_features']}-{t['n_hidden']}: "
            f"each feature's column of W beside each component's",
      column="feature", metrics=dict(MMCS=out["mmcs"], ML2R=out["ml2r"]))
  return out
