"""Signs of a failed decomposition that need no ground truth.

    d = diagnose(result, sample_fn, key)   # {name: float}, in summary.json

The known failure modes of APD and SPD on the toy models are a component
that serves two features (TMS 5-2's local minimum), a feature spread over
several components, and components that are never or always active. Each
has a sign in how the components are *used* on fresh inputs whose
coordinates are the features (the toy models' inputs), read off where each
component is active (APD: in the top-k mask; SPD: `G > threshold`):

  lift[c, i]     max(0, E[|x_i| | c active] − E[|x_i|]): how much input
                 coordinate i rises when component c is on;
  inputs_per_component
                 the largest, over alive components, participation ratio
                 `(Σ_i lift_ci)² / Σ_i lift_ci²` (1: one input coordinate;
                 2: two equally, as a component holding two features);
  shared_inputs  the largest cosine between two alive components' lift
                 vectors in one group (1: both rise with the same input,
                 as the parts of a split feature);
  coactivation   the largest Jaccard index |c ∧ c'| / |c ∨ c'| of two
                 components' active sets in one group;
  dead, always_on
                 components active on no input / on ≥ 99% of inputs.

The ratios are maxima over SPD's groups (products) too, so an SPD product
that legitimately serves many inputs (an identity layer's subcomponents
each serve one hidden direction) raises `inputs_per_component`. For inputs
that are not vectors of floats (token ids) only the activity counts are
given.
"""

from __future__ import annotations

import jax
import numpy as np

from apd_jax.analysis import summary

KEYS = ("inputs_per_component", "shared_inputs", "coactivation", "dead",
        "always_on")


def lift(active: np.ndarray, x: np.ndarray) -> np.ndarray:
  """`[C, d]`: `max(0, E[|x_i| | active_c] − E[|x_i|])`; 0 for a dead c."""
  a = active.astype(np.float64)
  ax = np.abs(x.reshape(len(x), -1).astype(np.float64))
  n_on = a.sum(axis=0)[:, None]
  with np.errstate(invalid="ignore", divide="ignore"):
    on = np.where(n_on > 0, (a.T @ ax) / n_on, 0.0)
  return np.where(n_on > 0, np.maximum(on - ax.mean(axis=0), 0.0), 0.0)


def from_activity(active: np.ndarray, x: np.ndarray | None) -> dict:
  """The diagnostics of one group: `active` `[N, C]` bool on the inputs
  `x` `[N, d]` (None: activity counts only)."""
  freq = active.mean(axis=0)
  alive = freq > 0
  out = dict(dead=float(np.sum(~alive)),
             always_on=float(np.sum(freq >= summary.ALWAYS_ON)))
  a = active[:, alive].astype(np.float64)
  both = a.T @ a
  either = a.sum(0)[:, None] + a.sum(0)[None, :] - both
  jac = both / np.maximum(either, 1)
  np.fill_diagonal(jac, 0.0)
  out["coactivation"] = float(jac.max()) if jac.size else 0.0
  if x is None:
    return out
  lf = lift(active, x)[alive]
  s1, s2 = lf.sum(axis=1), (lf ** 2).sum(axis=1)
  pr = np.where(s2 > 0, s1 ** 2 / np.where(s2 > 0, s2, 1), 0.0)
  out["inputs_per_component"] = float(pr.max()) if pr.size else 0.0
  norm = np.linalg.norm(lf, axis=1, keepdims=True)
  unit = lf / np.where(norm > 0, norm, 1)
  cos = unit @ unit.T
  np.fill_diagonal(cos, 0.0)
  out["shared_inputs"] = float(cos.max()) if cos.size else 0.0
  return out


def diagnose(result, sample_fn, key: jax.Array, *, batch_size: int = 1024,
             n_batches: int = 4) -> dict[str, float]:
  """The module's diagnostics of `result` on `n_batches` fresh batches:
  dead and always-on components summed over groups, the ratios' maxima."""
  xs, acts = [], {}
  for i in range(n_batches):
    x = sample_fn(jax.random.fold_in(key, i), batch_size)
    for g, (act, _) in summary.activity(result, x).items():
      acts.setdefault(g, []).append(np.asarray(act))
    xs.append(np.asarray(x))
  x = np.concatenate(xs)
  vector = x.ndim == 2 and np.issubdtype(x.dtype, np.floating)
  per = [from_activity(np.concatenate(a), x if vector else None)
         for a in acts.values()]
  out = {k: float(sum(p[k] for p in per)) for k in ("dead", "always_on")}
  for k in ("inputs_per_component", "shared_inputs", "coactivation"):
    if k in per[0]:
      out[k] = max(p[k] for p in per)
  return out
