"""How good a decomposition is: recovery of known features, sparsity, health."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _column_cosines(target: Array, P: Array) -> Array:
  """`cos(P[c, :, j], W[:, j])`: `[C, J]`, zero where a column is zero."""
  dot = jnp.einsum("ij,cij->cj", target, P)
  norms = jnp.linalg.norm(target, axis=0)[None] * jnp.linalg.norm(P, axis=1)
  return jnp.where(norms > 0, dot / jnp.where(norms > 0, norms, 1.0), 0.0)


def mmcs(target: Array, P: Array) -> Array:
  """Mean max cosine similarity over the columns j of `target [i, J]`.

  .. math::  MMCS = \\frac{1}{J} Σ_j \\max_c \\cos(P_c[:, j], W[:, j])
  """
  return jnp.mean(jnp.max(_column_cosines(target, P), axis=0))


def ml2r(target: Array, P: Array) -> Array:
  """Mean L2 ratio of each column's best-matching component to the target.

  .. math::  ML2R = \\frac{1}{J} Σ_j ||P_{c^*(j)}[:, j]|| / ||W[:, j]||,
             \\quad c^*(j) = \\arg\\max_c \\cos(P_c[:, j], W[:, j])
  """
  best = jnp.argmax(_column_cosines(target, P), axis=0)  # [J]
  cols = jnp.arange(target.shape[1])
  best_norm = jnp.linalg.norm(P[best, :, cols], axis=-1)
  return jnp.mean(best_norm / jnp.linalg.norm(target, axis=0))


def l0(mask: Array) -> Array:
  """Mean number of active components per example, `mask [B, C]`."""
  return jnp.mean(jnp.sum(mask, axis=-1))


def dead_components(masks: Array) -> Array:
  """Indices of components active in no example of `masks [..., C]`."""
  ever = jnp.any(masks.reshape(-1, masks.shape[-1]) > 0, axis=0)
  return jnp.flatnonzero(~ever)


def identity_ci_errors(ci: Array, off: float = 0.1, on: float = 0.9) -> int:
  """The VPD authors' TMS check on `ci [n, C]`, the causal importances of
  one product on the probes `0.75 e_i` (one row per input feature).

  The columns are matched to the features one to one, maximising the
  matched importances (Hungarian); an error is a matched entry below `on`
  or any other entry (the unmatched columns included) above `off`. Zero
  errors: each feature has a subcomponent of its own, and no other."""
  from scipy.optimize import linear_sum_assignment  # noqa: PLC0415

  ci = np.array(jax.device_get(ci), dtype=np.float64)
  rows, cols = linear_sum_assignment(ci, maximize=True)
  matched = ci[rows, cols]
  rest = ci.copy()
  rest[rows, cols] = 0.0
  return int((matched < on).sum() + (rest > off).sum())
