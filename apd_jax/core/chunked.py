"""Per-row losses over a wide last axis, a chunk of rows at a time.

    per_row = map_rows(fn, logits, other, chunk=16)    # [N], as fn(...)

A language model's logits are `[B, T, V]`; a loss on them (KL, cross-
entropy) built from `log_softmax` keeps several more `[B, T, V]` arrays
alive in the forward pass and again in the backward pass. With a vocabulary
of 262,144, one such float32 array is 1 MB per position. `map_rows`
computes `fn` on `chunk` rows at a time in a loop and, in the backward pass,
recomputes each chunk's forward before its cotangent (as `jax.checkpoint`
would), so the only arrays of the inputs' size are the inputs and their
cotangents. The values are those of `fn` on all rows at once: each row's
value depends on that row alone.

The last chunk starts at `N − chunk` rather than being padded (padding would
copy the inputs): rows it shares with the chunk before it are computed
twice and written twice with the same value.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

Array = jax.Array
# Rows per chunk by default: about this many elements of the widest input
# (2^22 float32 = 16 MiB), so models with small outputs run in one chunk.
CHUNK_ELEMENTS = 1 << 22


def default_chunk(width: int) -> int:
  """Rows per chunk for rows of `width` elements: `max(1, 2^22 // width)`."""
  return max(1, CHUNK_ELEMENTS // max(int(width), 1))


def map_rows(fn: Callable[..., Array], *arrays: Array,
             chunk: int | None = None) -> Array:
  """`fn(*arrays)` for a row-wise `fn`, computed `chunk` rows at a time.

  Args:
    fn: maps arrays whose leading axis holds the same `n` rows to `[n]`,
      each row's value a function of that row of each array alone.
    *arrays: `[N, ...]` each (integer arrays, such as labels, too).
    chunk: rows per chunk; None: `default_chunk` of the widest row. With
      `N ≤ chunk`, `fn` runs once on all rows.

  Returns:
    `[N]`, equal to `fn(*arrays)`; differentiable in the floating arrays,
    with a backward pass that recomputes each chunk (nothing of the inputs'
    size is stored beyond the inputs).
  """
  n = arrays[0].shape[0]
  if chunk is None:
    chunk = default_chunk(max(math.prod(a.shape[1:]) for a in arrays))
  if chunk < 1:
    raise ValueError(f"chunk must be positive, got {chunk}")
  if n <= chunk:
    return fn(*arrays)
  return _map_rows(fn, chunk, *arrays)


def _n_chunks(n: int, chunk: int) -> int:
  return -(-n // chunk)


def _rows(arrays, i, n: int, chunk: int):
  """The start of chunk `i` (the last one ends at `n`) and its rows."""
  start = jnp.minimum(i * chunk, n - chunk)
  return start, [lax.dynamic_slice_in_dim(a, start, chunk) for a in arrays]


def _forward(fn, chunk: int, arrays) -> Array:
  n = arrays[0].shape[0]
  shape = jax.eval_shape(fn, *[jax.ShapeDtypeStruct((chunk,) + a.shape[1:],
                                                    a.dtype) for a in arrays])

  def body(i, out):
    start, rows = _rows(arrays, i, n, chunk)
    return lax.dynamic_update_slice_in_dim(out, fn(*rows), start, 0)

  return lax.fori_loop(0, _n_chunks(n, chunk), body,
                       jnp.zeros((n,), shape.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _map_rows(fn, chunk, *arrays):
  return _forward(fn, chunk, arrays)


def _map_rows_fwd(fn, chunk, *primals):
  arrays = tuple(p.value for p in primals)
  # Which arrays need a cotangent, in the residuals' structure (a static
  # fact): a dict keyed by their positions.
  wanted = {i: () for i, p in enumerate(primals)
            if p.perturbed and jnp.issubdtype(p.value.dtype, jnp.inexact)}
  return _forward(fn, chunk, arrays), (arrays, wanted)


def _map_rows_bwd(fn, chunk, residuals, ct):
  arrays, wanted = residuals
  wanted = sorted(wanted)
  if isinstance(ct, SymbolicZero) or not wanted:
    return (None,) * len(arrays)
  n = arrays[0].shape[0]

  def body(i, cts):
    start, rows = _rows(arrays, i, n, chunk)

    def of_wanted(*values):
      full = list(rows)
      for j, v in zip(wanted, values, strict=True):
        full[j] = v
      return fn(*full)

    _, vjp = jax.vjp(of_wanted, *[rows[j] for j in wanted])
    grads = vjp(lax.dynamic_slice_in_dim(ct, start, chunk))
    return tuple(lax.dynamic_update_slice_in_dim(c, g, start, 0)
                 for c, g in zip(cts, grads, strict=True))

  cts = lax.fori_loop(0, _n_chunks(n, chunk), body,
                      tuple(jnp.zeros_like(arrays[j]) for j in wanted))
  out = dict(zip(wanted, cts, strict=True))
  return tuple(out.get(i) for i in range(len(arrays)))


_map_rows.defvjp(_map_rows_fwd, _map_rows_bwd, symbolic_zeros=True)
