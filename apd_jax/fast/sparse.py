"""Masked factored products that skip the components a mask switches off.

The masked pass computes, for every example b,

.. math::  y_b = Σ_c s_{bc} (a_b U_c) V_c

with a top-k mask `s [B, C]` that keeps only `K` entries (batch top-k keeps
`int(k·B)`, about 1.3 per example of C = 130 in the paper's runs). The dense
form costs `B·C·m·(i + o)`; this one costs about `(K + C·T/2)·m·(i + o)`.

`masked_matmul` is written for one example. Under `jax.vmap` its batching
rule gathers the kept `(b, c)` pairs, groups them by component into tiles of
`T` rows that share one component, and runs one small matmul per tile:

1. the pairs, sorted by component: `nonzero(sᵀ)` with the static size `K`;
2. component c gets `⌈n_c / T⌉` tiles; pair j goes to row `r_j` of them;
3. `z = A[rows] @ U[tile]`, scaled by `s`, then `z @ V[tile]`;
4. the rows are scatter-added back to their examples.

Every step is a plain JAX op, so gradients with respect to `a`, `U` and `V`
come from autodiff (the gathers become scatter-adds), on any backend.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

Array = jax.Array


def tile_rows(capacity: int, n_components: int) -> int:
  """Rows per tile: a power of two near `2·sqrt(K / C)`, in [1, 64].

  Larger tiles gather fewer copies of the factors (`≈ K/T + C`); smaller
  ones pad less (`≈ C·T/2` wasted rows).
  """
  t = 2.0 * math.sqrt(max(capacity, 1) / n_components)
  return int(min(64, max(1, 2 ** round(math.log2(max(t, 1.0))))))


def dense_masked_matmul(a: Array, U: Array, V: Array, s: Array) -> Array:
  """`Σ_c s_c (a U_c) V_c` for one example: `a [..., i]`, `U [C, i, m]`,
  `V [C, m, o]`, `s [C]` → `[..., o]`."""
  z = jnp.einsum("...i,cim->...cm", a, U) * s[:, None]
  return jnp.einsum("...cm,cmo->...o", z, V)


def masked_matmul(a: Array, U: Array, V: Array, s: Array,
                  capacity: int) -> Array:
  """`dense_masked_matmul(a, U, V, s)`; vmapped over examples, it only
  computes the at most `capacity` nonzero `(b, c)` entries of the mask.

  `capacity` must bound the number of nonzero entries of the batched `s`;
  entries beyond it would be dropped.
  """
  return _masked_matmul(capacity)(a, U, V, s)


@functools.lru_cache(maxsize=None)
def _masked_matmul(capacity: int):
  f = custom_vmap(dense_masked_matmul)

  @f.def_vmap
  def rule(axis_size, in_batched, a, U, V, s):
    a_b, u_b, v_b, s_b = in_batched
    if u_b or v_b or not s_b:  # a sweep over factors: keep the dense form
      axes = [0 if b else None for b in in_batched]
      return jax.vmap(dense_masked_matmul, in_axes=axes)(a, U, V, s), True
    if not a_b:
      a = jnp.broadcast_to(a, (axis_size,) + a.shape)
    return batched_masked_matmul(a, U, V, s, capacity), True

  return f


def batched_masked_matmul(a: Array, U: Array, V: Array, s: Array,
                          capacity: int, rows_per_tile: int | None = None
                          ) -> Array:
  """`y_b = Σ_c s_bc (a_b U_c) V_c` for `a [B, ..., i]`, `s [B, C]`, using
  only the nonzero entries of `s` (at most `capacity` of them)."""
  B, C = s.shape
  K = min(capacity, B * C)
  T = rows_per_tile or tile_rows(K, C)
  n_tiles = (K + C * (T - 1)) // T
  # Kept pairs sorted by component (then example); unused slots hold B·C.
  by_comp = s.T.reshape(-1)
  flat = jnp.nonzero(by_comp, size=K, fill_value=B * C)[0]
  valid = flat < B * C
  comp = jnp.where(valid, flat // B, C)
  ex = jnp.where(valid, flat % B, B)
  weight = jnp.where(valid, by_comp[jnp.minimum(flat, B * C - 1)], 0)
  # Group c owns tiles [tile_start_c, tile_start_c + ⌈n_c/T⌉).
  counts = jnp.zeros(C + 1, jnp.int32).at[comp].add(1)[:C]
  tiles = (counts + T - 1) // T
  tile_end = jnp.cumsum(tiles)
  tile_start = tile_end - tiles
  group_start = jnp.cumsum(counts) - counts
  c_safe = jnp.minimum(comp, C - 1)
  slot = jnp.where(valid,
                   tile_start[c_safe] * T + jnp.arange(K) - group_start[c_safe],
                   n_tiles * T)
  rows = jnp.full(n_tiles * T, B, jnp.int32).at[slot].set(ex, mode="drop")
  scale = jnp.zeros(n_tiles * T, s.dtype).at[slot].set(weight, mode="drop")
  tile_comp = jnp.minimum(
      jnp.searchsorted(tile_end, jnp.arange(n_tiles), side="right"), C - 1)
  # One zero row stands in for the padding.
  a_pad = jnp.concatenate([a, jnp.zeros((1,) + a.shape[1:], a.dtype)])
  a_t = a_pad[rows].reshape((n_tiles, T) + a.shape[1:])
  z = jnp.einsum("nt...i,nim->nt...m", a_t, U[tile_comp])
  z = z * scale.reshape((n_tiles, T) + (1,) * (z.ndim - 2))
  y = jnp.einsum("nt...m,nmo->nt...o", z, V[tile_comp])
  y = y.reshape((n_tiles * T,) + y.shape[2:])
  out = jnp.zeros((B + 1,) + y.shape[1:], y.dtype).at[rows].add(y)
  return out[:B]
