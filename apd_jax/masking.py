"""Top-k masks from attributions. Masks are 0/1 floats and carry no gradient.

`k` is a Python number, or a traced scalar when it varies across the runs of a
sweep (vmapped); the traced form ranks the entries instead of calling
`lax.top_k` (whose size must be static) and selects the same entries.
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


def _ranks(values: Array) -> Array:
  """Each entry's position in the descending order of the last axis, ties
  broken by index (as `lax.top_k`): the largest has rank 0."""
  order = jnp.argsort(-values, axis=-1, stable=True)
  positions = jnp.broadcast_to(jnp.arange(values.shape[-1]), values.shape)
  return jnp.put_along_axis(jnp.zeros_like(order), order, positions, axis=-1,
                            inplace=False)


def traced_mask(attributions: Array, k: Array, *, batch_topk: bool) -> Array:
  """`make_mask` for a traced `k`: keeps the entries of rank below the count.

  Batch top-k keeps the `⌊k·B⌋` top entries of the whole `[B, C]` array
  (`k·B` computed in `k`'s dtype), per-example top-k the `⌊k⌋` top of each
  row. The selection equals `lax.top_k`'s, ties included.
  """
  attributions = jax.lax.stop_gradient(attributions)
  B, C = attributions.shape
  if batch_topk:
    count = jnp.floor(k * B).astype(jnp.int32)
    ranks = _ranks(attributions.reshape(-1)).reshape(B, C)
  else:
    count = jnp.floor(k).astype(jnp.int32)
    ranks = _ranks(attributions)
  return (ranks < count).astype(attributions.dtype)


def make_mask(attributions: Array, k: float | Array, *,
              batch_topk: bool) -> Array:
  """Batch or per-example top-k mask of `attributions [B, C]`."""
  if isinstance(k, jax.Array):
    return traced_mask(attributions, k, batch_topk=batch_topk)
  if batch_topk:
    return batch_topk_mask(attributions, k)
  return topk_mask(attributions, int(k))
