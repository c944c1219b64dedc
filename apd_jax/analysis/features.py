"""Analyses of a decomposed residual MLP: which component computes what.

For input feature `i` with embedding `e_i = W_E[i]` (and readout `e_i`, as
`W_U = W_Eᵀ`), neuron `n` of layer `l` contributes

.. math::  κ_{i,n} = (e_i W^{in}_l)_n · (W^{out}_l e_i^T)_n,

the product of how strongly the feature drives the neuron and how strongly
the neuron writes back to the feature. The same formula on a component's
weights `P_c` gives the component's contributions. A feature is *recovered*
when its best component (the one with the largest attribution on an input
where only that feature is on) has contributions with cosine similarity
≥ 0.9 to the target's.

*Scrubbing* tests that the components of the active features are the ones
that matter: ablating a random half of the components while sparing those
(scrubbed) should keep the loss low; ablating a random half that includes
them (anti-scrubbed) should not. The baseline is a monosemantic model that
computes 50 of the 100 functions exactly, one neuron each.

All functions take plain arrays or a `Decomposition`, so they apply to any
run: `evaluate_residual(result, sample_fn, key)` gives the numbers.
"""

from __future__ import annotations

from typing import Any
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def layer_names(n_layers: int) -> list[tuple[str, str]]:
  """`(W_in name, W_out name)` per layer, as `selection` names leaves."""
  return [(f"['layers'][{j}]['W_in']", f"['layers'][{j}]['W_out']")
          for j in range(n_layers)]


def contributions(W_E: Array, weights: Sequence[tuple[Array, Array]]
                  ) -> Array:
  """`κ [n_features, Σ_l d_mlp_l]`: every feature's neuron contributions.

  Args:
    W_E: `[n_features, d_resid]`.
    weights: `(W_in [d_resid, d], W_out [d, d_resid])` per layer.
  """
  return jnp.concatenate([(W_E @ w_in) * (W_E @ w_out.T)
                          for w_in, w_out in weights], axis=1)


def component_contributions(W_E: Array, P: dict[str, Array],
                            n_layers: int) -> Array:
  """`κ [C, n_features, Σ_l d_mlp_l]` of each component's weights."""
  return jax.vmap(lambda Pc: contributions(
      W_E, [(Pc[i], Pc[o]) for i, o in layer_names(n_layers)]))(P)


def cosine_rows(a: Array, b: Array) -> Array:
  """Row-wise cosine similarity; 0 where a row is zero."""
  num = jnp.sum(a * b, axis=-1)
  den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def best_components(result, n_features: int, value: float = 1.0) -> Array:
  """Per feature, the component with the largest attribution on the input
  `x = value·e_i` (only feature i on): `[n_features]`."""
  x = value * jnp.eye(n_features)
  (scores,) = result.scores(x).values()    # one group over every leaf
  return jnp.argmax(scores, axis=1)


def recovery(target_kappa: Array, component_kappa: Array, best: Array,
             threshold: float = 0.9) -> dict[str, Any]:
  """Cosine similarity of each feature's contributions with its best
  component's, and how many features reach `threshold`."""
  n = target_kappa.shape[0]
  cos = cosine_rows(target_kappa, component_kappa[best, jnp.arange(n)])
  return dict(cosine=cos, n_recovered=int(jnp.sum(cos >= threshold)),
              n_features=n,
              n_distinct_best=int(len(np.unique(np.asarray(best)))))


def scrub_masks(key: Array, active: Array, best: Array, n_components: int
                ) -> tuple[Array, Array]:
  """`(scrubbed, anti)` masks `[B, C]` that each switch off half the
  components: scrubbed spares the best components of the active features,
  anti-scrubbed switches those off first."""
  needed = jnp.zeros(active.shape[:1] + (n_components,))
  needed = needed.at[:, best].max(active.astype(needed.dtype))   # [B, C]
  half = n_components // 2
  score = jax.random.uniform(key, needed.shape)

  def off(priority):  # the `half` components with the highest priority
    order = jnp.argsort(-priority, axis=1)
    ranks = jnp.argsort(order, axis=1)
    return (ranks < half).astype(needed.dtype)

  scrubbed = 1.0 - off(score - 2.0 * needed)    # never the needed ones
  anti = 1.0 - off(score + 2.0 * needed)        # the needed ones first
  return scrubbed, anti


def monosemantic_loss(x: Array, labels: Array, n_neurons: int) -> Array:
  """Per-example task loss of a model computing `labels` exactly for the
  first `n_neurons` features and `x_i` (the residual) for the rest."""
  y = jnp.where(jnp.arange(x.shape[1]) < n_neurons, labels, x)
  return jnp.mean((y - labels) ** 2, axis=1)


def scrubbing(result, x: Array, labels: Array, best: Array, key: Array,
              n_neurons: int) -> dict[str, Array]:
  """Per-example task losses (MSE to `labels`) of the target, the top-k
  pass, the scrubbed and anti-scrubbed decompositions and the monosemantic
  baseline, on the examples of `x` with at least one active feature (the
  top-k pass with training's batch top-k mask of these examples)."""
  keep = np.asarray(jnp.any(x != 0, axis=1))
  x, labels = x[keep], labels[keep]
  C = result.components.n_components
  scrubbed, anti = scrub_masks(key, x != 0, best, C)

  def loss(y):
    return jnp.mean((y - labels) ** 2, axis=1)

  return dict(target=loss(result.target.batch(x)[0]),
              topk=loss(result.apply(x, result.masks(x, batch=True))),
              scrubbed=loss(result.apply(x, scrubbed)),
              anti_scrubbed=loss(result.apply(x, anti)),
              monosemantic=monosemantic_loss(x, labels, n_neurons))


def evaluate_residual(result, sample_fn, key: Array, *, labels_fn,
                      n_batches: int = 4, batch_size: int = 2048
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Feature recovery and scrubbing of a residual-MLP decomposition.

  Returns:
    `(summary, details)`: numbers for `summary.json`, and the arrays the
    figures need (contributions, best components, per-example losses).
  """
  params = result.target.params
  W_E = params["W_E"]
  n_layers = len(params["layers"])
  n_features = W_E.shape[0]
  kappa = contributions(W_E, [(p["W_in"], p["W_out"])
                              for p in params["layers"]])
  comp_kappa = component_contributions(W_E, result.component_weights,
                                       n_layers)
  best = best_components(result, n_features)
  rec = recovery(kappa, comp_kappa, best)
  losses = []
  for b in range(n_batches):
    k_x, k_mask = jax.random.split(jax.random.fold_in(key, b))
    x = sample_fn(k_x, batch_size)
    losses.append(scrubbing(result, x, labels_fn(x), best, k_mask,
                            n_neurons=kappa.shape[1]))
  losses = {k: np.concatenate([np.asarray(d[k]) for d in losses])
            for k in losses[0]}
  summary = dict(features_recovered=rec["n_recovered"],
                 n_features=n_features,
                 distinct_best_components=rec["n_distinct_best"],
                 mean_best_cosine=float(jnp.mean(rec["cosine"])),
                 **{f"loss_{k}": float(np.mean(v)) for k, v in losses.items()})
  details = dict(kappa=np.asarray(kappa), comp_kappa=np.asarray(comp_kappa),
                 best=np.asarray(best), cosine=np.asarray(rec["cosine"]),
                 losses=losses)
  return summary, details


def function_weights(weights: dict[str, Array], neuron_fns: Sequence[Array],
                     fn: int) -> dict[str, Array]:
  """The target's `W_in` columns and `W_out` rows of function `fn`'s
  neurons (zeros elsewhere): what its ideal component looks like."""
  out = {}
  for j, (w_in, w_out) in enumerate(layer_names(len(neuron_fns))):
    own = (neuron_fns[j] == fn).astype(weights[w_in].dtype)
    out[w_in] = weights[w_in] * own[None, :]
    out[w_out] = weights[w_out] * own[:, None]
  return out


def function_recovery(weights: dict[str, Array], P: dict[str, Array],
                      neuron_fns: Sequence[Array]) -> Array:
  """`cos[f, c]` between component c's weights (all decomposed leaves
  concatenated) and function f's part of the target; a function is
  recovered by one component when its row max is near 1."""
  names = [n for pair in layer_names(len(neuron_fns)) for n in pair]
  flat_P = jnp.concatenate([P[n].reshape(P[n].shape[0], -1) for n in names],
                           axis=1)
  n_functions = int(max(int(jnp.max(f)) for f in neuron_fns)) + 1
  ideal = jnp.stack([jnp.concatenate(
      [function_weights(weights, neuron_fns, f)[n].ravel() for n in names])
      for f in range(n_functions)])
  num = ideal @ flat_P.T
  den = (jnp.linalg.norm(ideal, axis=1)[:, None]
         * jnp.linalg.norm(flat_P, axis=1)[None])
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def neuron_norms(P: dict[str, Array], n_layers: int) -> Array:
  """`[C, Σ_l d_mlp_l]`: each neuron's weight norm in each component,
  `sqrt(||P_c^in[:, n]||² + ||P_c^out[n, :]||²)`."""
  return jnp.concatenate([jnp.sqrt(jnp.sum(P[i] ** 2, axis=1)
                                   + jnp.sum(P[o] ** 2, axis=2))
                          for i, o in layer_names(n_layers)], axis=1)


# -- SPD: subcomponents belong to one matrix ----------------------------------


def spd_input_contributions(W_E: Array, weights: dict[str, Array],
                            n_layers: int) -> Array:
  """`κ_in [n_features, Σ_l d_mlp_l]`: `W_E[f] @ W_in_l`, what each feature
  writes into every layer's neurons."""
  return jnp.concatenate([W_E @ weights[i] for i, _ in layer_names(n_layers)],
                         axis=1)


def spd_recovery(result, threshold: float = 0.9) -> dict[str, Any]:
  """Per feature f, its own `W_in` subcomponent per layer: the one most
  causally important on the input `e_f`; its contribution
  `(W_E[f]·u_c) v_c` (zero in a layer where no subcomponent is active)
  against the target's `W_E[f] @ W_in`, by cosine over all layers' neurons.

  Returns the cosines, the best subcomponent per feature and layer (-1:
  none active), how many features reach `threshold`, how many of those
  have a best subcomponent no other recovered feature shares, and the
  target's and the best subcomponents' contributions.
  """
  params = result.target.params
  W_E = params["W_E"]
  n_layers = len(params["layers"])
  n = W_E.shape[0]
  G = result.scores(jnp.eye(n))
  active = result.active(jnp.eye(n))
  kappa = spd_input_contributions(W_E, result.target.weights, n_layers)
  own, best = [], []
  for w_in, _ in layer_names(n_layers):
    g = G[w_in]                                         # [n, C]
    c = jnp.argmax(g, axis=1)
    on = jnp.any(active[w_in], axis=1)
    u = result.components.U[w_in][c, :, 0]              # [n, d_resid]
    v = result.components.V[w_in][c, 0, :]              # [n, d_mlp]
    own.append(jnp.where(on[:, None],
                         jnp.sum(W_E * u, axis=1)[:, None] * v, 0.0))
    best.append(jnp.where(on, c, -1))
  own = jnp.concatenate(own, axis=1)
  cos = cosine_rows(kappa, own)
  best = np.stack([np.asarray(b) for b in best], axis=1)   # [n, layers]
  ok = np.asarray(cos) >= threshold
  keys = [tuple(b) for b in best[ok]]
  distinct = sum(keys.count(k) == 1 for k in keys)
  return dict(cosine=np.asarray(cos), best=best, n_recovered=int(ok.sum()),
              n_own=int(distinct), n_features=n, kappa=np.asarray(kappa),
              own=np.asarray(own))


def function_recovery_per_leaf(weights: dict[str, Array],
                               P: dict[str, Array],
                               neuron_fns: Sequence[Array]) -> Array:
  """SPD: `[n_functions, leaves]`, per decomposed matrix the best cosine of
  one subcomponent `P[leaf][c]` with function f's part of that matrix (a
  function is recovered when every matrix has one)."""
  names = [n for pair in layer_names(len(neuron_fns)) for n in pair]
  n_functions = int(max(int(jnp.max(f)) for f in neuron_fns)) + 1
  out = []
  for f in range(n_functions):
    ideal = function_weights(weights, neuron_fns, f)
    row = []
    for n in names:
      flat = P[n].reshape(P[n].shape[0], -1)
      row.append(jnp.max(cosine_rows(ideal[n].ravel()[None], flat)))
    out.append(jnp.stack(row))
  return jnp.stack(out)
