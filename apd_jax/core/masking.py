"""Top-k masks from attributions. Masks are 0/1 floats and carry no gradient.

`k` is a Python number, or a traced scalar when it varies across the runs of a
sweep (vmapped); `lax.top_k` needs a static size, so the traced form takes the
top-k of a static bound `k_max ≥ k` and keeps its first `⌊k·B⌋` entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def topk_mask(attributions: Array, k: int) -> Array:
  """Per-example top-k: each row of `attributions [B, C]` keeps its k top."""
  if not isinstance(k, int) or k < 1:
    raise ValueError(f"per-example top-k needs an integer k >= 1, got {k!r}")
  _, idx = jax.lax.top_k(jax.lax.stop_gradient(attributions), k)
  mask = jnp.sum(jax.nn.one_hot(idx, attributions.shape[-1]), axis=-2)
  return mask.astype(attributions.dtype)


def batch_topk_count(k: float, batch_size: int) -> int:
  """The number of entries batch top-k keeps: `int(k·B)`."""
  return int(k * batch_size)


def batch_topk_mask(attributions: Array, k: float) -> Array:
  """Batch top-k: the `int(k·B)` largest entries of the whole `[B, C]` array.

  Examples may therefore use different numbers of components; on average each
  uses k. Exactly `int(k·B)` entries are 1 (ties broken by position).
  """
  B, C = attributions.shape
  n = batch_topk_count(k, B)
  if not 0 < n <= B * C:
    raise ValueError(
        f"batch top-k keeps int(k*B) = int({k}*{B}) = {n} entries; it must be "
        f"in [1, B*C = {B * C}]")
  flat = jax.lax.stop_gradient(attributions).reshape(-1)
  _, idx = jax.lax.top_k(flat, n)
  mask = jnp.zeros_like(flat).at[idx].set(1.0)
  return mask.reshape(B, C)


def batch_topk_threshold(attributions: Array, k: float) -> Array:
  """The smallest entry batch top-k keeps: the `int(k·B)`-th largest of
  `attributions [B, C]` (of `[B, T, C]`, each of the B·T positions an
  example). On a large batch of the training distribution it calibrates a
  per-example rule, `A ≥ τ`, that keeps k entries per example on average."""
  flat = attributions.reshape(-1, attributions.shape[-1])
  n = batch_topk_count(k, flat.shape[0])
  if not 0 < n <= flat.size:
    raise ValueError(f"batch top-k keeps int(k*B) = {n} entries of "
                     f"{flat.size}")
  return jax.lax.top_k(flat.reshape(-1), n)[0][-1]


def threshold_mask(attributions: Array, threshold: float | Array) -> Array:
  """`1` where `A ≥ threshold` and `A > 0`, per entry: each example's mask
  independent of the others in its batch."""
  keep = (attributions >= threshold) & (attributions > 0)
  return keep.astype(attributions.dtype)


def traced_mask(attributions: Array, k: Array, *, k_max: float,
                batch_topk: bool) -> Array:
  """`make_mask` for a traced `k ≤ k_max`, with `k_max` a Python number.

  Batch top-k keeps the `⌊k·B⌋` top entries of the whole `[B, C]` array
  (`k·B` computed in `k`'s dtype), per-example top-k the `⌊k⌋` top of each
  row: the first of the `lax.top_k` for `k_max` (sorted, ties to the lower
  index), so the selection is the one `lax.top_k` makes for `k`.
  """
  attributions = jax.lax.stop_gradient(attributions)
  B, C = attributions.shape
  if batch_topk:
    n_max = batch_topk_count(k_max, B)
    _, idx = jax.lax.top_k(attributions.reshape(-1), n_max)
    keep = jnp.arange(n_max) < jnp.floor(k * B).astype(jnp.int32)
    mask = jnp.zeros(B * C, attributions.dtype).at[idx].set(keep)
    return mask.reshape(B, C)
  _, idx = jax.lax.top_k(attributions, int(k_max))
  keep = jnp.arange(int(k_max)) < jnp.floor(k).astype(jnp.int32)
  mask = jnp.sum(jax.nn.one_hot(idx, C) * keep[:, None], axis=-2)
  return mask.astype(attributions.dtype)


def make_mask(attributions: Array, k: float | Array, *, batch_topk: bool,
              k_max: float | None = None) -> Array:
  """Batch or per-example top-k mask of `attributions [B, C]`, or of
  `[B, T, C]` with each of the B·T positions an example (the mask has the
  attributions' shape).

  A traced `k` needs `k_max`, a Python number bounding it.
  """
  shape = attributions.shape
  attributions = attributions.reshape(-1, shape[-1])
  if isinstance(k, jax.Array):
    if k_max is None:
      raise ValueError("a traced top-k needs k_max, a static bound")
    mask = traced_mask(attributions, k, k_max=k_max, batch_topk=batch_topk)
  elif batch_topk:
    mask = batch_topk_mask(attributions, k)
  else:
    mask = topk_mask(attributions, int(k))
  return mask.reshape(shape)
