"""Causal-importance functions: what maps a product's inner activations to
the logits of its subcomponents' causal importances.

The SPD paper's function is a tiny MLP per subcomponent on its own scalar
inner activation `h_c = a · u_c`:

.. math::  z_c = Σ_j w2_{cj} \\, gelu(w1_{cj} h_c + b1_{cj}) + b2_c

A batch of `N` rows then has `N × C × d` hidden units, most of the SPD
step on the toy models. Written plainly, autodiff keeps the `[N, C, d]`
pre-activations for the backward pass and streams them through memory
several times. `scalar_mlp` instead has a hand-written backward pass that
walks the rows in blocks small enough to stay in cache, recomputing each
block's hidden layer: the values are those of the plain expression, the
gradients equal autodiff's to float precision (tests/methods/
test_ci_functions.py), and nothing of size `N × C × d` is stored. On an
accelerator the plain expression is used.

VPD's toys read whole activations instead: `layerwise` is one MLP per
product from its input vector `a_k` to its `C_k` logits, `global_` one
MLP from every product's input concatenated to all their logits.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import jax
import jax.numpy as jnp

Array = jax.Array

# Hidden units per block of the backward pass (`rows × C × d`): enough that
# XLA splits each block's loops over both cores, few enough that each
# core's half of an array (1 MB) stays in its 2 MB L2 cache. Measured on a
# 2-core CPU, TMS 40-10's (C 200, d 16, batch 4096) gate backward takes
# 30, 42, 23, 24 and 37 ms at 2^13, 2^17, 2^19, 2^21 and 2^22; on one with
# 1 MiB of L2 per core, the gate's forward and backward 41-46, 54-59,
# 28-30, 25-33 and 26-27 ms at 2^15, 2^16-2^17, 2^18, 2^19 and 2^20.
BLOCK_ELEMENTS = 1 << 19
_SQRT_HALF = 0.5 ** 0.5
_INV_SQRT_2PI = (2 * math.pi) ** -0.5


def gelu(x: Array) -> Array:
  """`x Φ(x) = x (1 + erf(x/√2)) / 2`, the exact GELU.

  Written with `erf` rather than `jax.nn.gelu`'s `erfc`: the same values to
  1e-6, and on XLA:CPU one exponential fewer per element."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


def _gelu_and_slope(x: Array) -> tuple[Array, Array]:
  """`(gelu(x), gelu'(x))` with `gelu' = Φ(x) + x φ(x)`."""
  cdf = 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))
  pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)
  return x * cdf, cdf + x * pdf


def init_scalar_mlp(key: Array, n: int, hidden: int) -> dict[str, Array]:
  """`n` MLPs `1 → hidden → 1`: `w1 ~ N(0, 2)`, `w2 ~ N(0, 1/hidden)`
  (Kaiming, fans 1 and hidden), zero biases; `w1, b1, w2: [n, hidden]`,
  `b2: [n]`."""
  k1, k2 = jax.random.split(key)
  return dict(w1=jax.random.normal(k1, (n, hidden)) * 2 ** 0.5,
              b1=jnp.zeros((n, hidden)),
              w2=jax.random.normal(k2, (n, hidden)) / hidden ** 0.5,
              b2=jnp.zeros((n,)))


_BLOCKED = [True]


@contextlib.contextmanager
def unblocked():
  """Within it, `scalar_mlp` traces as the plain expression (autodiff
  stores the hidden layer). For counting a step's work: XLA's cost analysis
  counts a loop's body once, so the blocked backward's work is undercounted
  (the benchmark counts on the plain form and times the blocked one)."""
  _BLOCKED.append(False)
  try:
    yield
  finally:
    _BLOCKED.pop()


def scalar_mlp(mlp: dict[str, Array], h: Array) -> Array:
  """`z [..., C]` of the per-subcomponent MLPs `mlp` on `h [..., C]`."""
  args = (mlp["w1"], mlp["b1"], mlp["w2"], mlp["b2"])
  if not _BLOCKED[-1] or jax.default_backend() != "cpu":
    # An accelerator streams the hidden layer from its memory fast, and a
    # loop of small blocks would leave it idle.
    return _forward(*args, h)
  lead = h.shape[:-1]
  z = _scalar_mlp(*args, h.reshape(-1, h.shape[-1]))
  return z.reshape(*lead, h.shape[-1])


def _forward(w1, b1, w2, b2, h):
  return jnp.sum(gelu(h[..., None] * w1 + b1) * w2, axis=-1) + b2


@jax.custom_vjp
def _scalar_mlp(w1, b1, w2, b2, h):
  """`z [N, C]` for `h [N, C]`; see the module docstring."""
  return _forward(w1, b1, w2, b2, h)


def _fwd(w1, b1, w2, b2, h):
  return _forward(w1, b1, w2, b2, h), (w1, b1, w2, h)


def _block_rows(n: int, c: int, d: int) -> int:
  """Rows per backward block: a power of two with about `BLOCK_ELEMENTS`
  hidden units, at most `n`."""
  rows = max(1, BLOCK_ELEMENTS // max(c * d, 1))
  rows = 1 << (rows.bit_length() - 1)
  return max(1, min(rows, n))


def _bwd(res, dz):
  w1, b1, w2, h = res
  n, c = h.shape
  rows = _block_rows(n, c, w1.shape[-1])
  pad = -n % rows
  hb = jnp.pad(h, ((0, pad), (0, 0))).reshape(-1, rows, c)
  gb = jnp.pad(dz, ((0, pad), (0, 0))).reshape(-1, rows, c)
  acc = jnp.promote_types(w1.dtype, jnp.float32)   # sums in float32 at least

  def block(carry, xs):
    dw1, db1, dw2 = carry
    hk, gk = xs                                    # [rows, C]
    pre = hk[..., None] * w1 + b1                  # [rows, C, d]
    act, slope = _gelu_and_slope(pre)
    g = gk[..., None]
    dpre = g * w2 * slope
    carry = (dw1 + jnp.sum(dpre * hk[..., None], 0, dtype=acc),
             db1 + jnp.sum(dpre, 0, dtype=acc),
             dw2 + jnp.sum(g * act, 0, dtype=acc))
    return carry, jnp.sum(dpre * w1, -1)           # dh [rows, C]

  zeros = jnp.zeros(w1.shape, acc)
  (dw1, db1, dw2), dh = jax.lax.scan(block, (zeros, zeros, zeros), (hb, gb))
  dh = dh.reshape(-1, c)[:n]
  return (dw1.astype(w1.dtype), db1.astype(b1.dtype), dw2.astype(w2.dtype),
          jnp.sum(dz, 0).astype(dz.dtype), dh.astype(h.dtype))


_scalar_mlp.defvjp(_fwd, _bwd)


# -- functions of whole activations (VPD's toys) ------------------------------


def init_mlp(key: Array, widths: tuple[int, ...]
             ) -> dict[str, dict[str, Array]]:
  """Layers `widths[0] → … → widths[-1]` (`{'0': {'w', 'b'}, '1': …}`, a
  dict so that it saves and loads as it is): weights Kaiming-normal (gain
  √2 into a GELU, 1 into the output), zero biases."""
  layers = {}
  for j, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:],
                                        strict=True)):
    gain = 2.0 if j < len(widths) - 2 else 1.0
    w = jax.random.normal(jax.random.fold_in(key, j), (d_in, d_out))
    layers[str(j)] = dict(w=w * (gain / d_in) ** 0.5, b=jnp.zeros((d_out,)))
  return layers


def mlp(layers: dict[str, dict[str, Array]], a: Array) -> Array:
  """`a [..., widths[0]] → [..., widths[-1]]`, exact GELU between layers
  and none after the last."""
  for j in range(len(layers)):
    layer = layers[str(j)]
    a = a @ layer["w"] + layer["b"]
    if j < len(layers) - 1:
      a = gelu(a)
  return a


def init_layerwise(key: Array, d_ins: dict[str, int],
                   n_components: dict[str, int], hidden: tuple[int, ...]
                   ) -> dict[str, dict]:
  """One MLP per product `k`: its input `a_k [i_k] → hidden → C_k`."""
  return {k: init_mlp(jax.random.fold_in(key, j),
                      (d_ins[k], *hidden, n_components[k]))
          for j, k in enumerate(sorted(d_ins))}


def layerwise(params: dict[str, dict], inputs: dict[str, Array]
              ) -> dict[str, Array]:
  """`{k: z_k [..., C_k]}`, each product's logits from its own input."""
  return {k: mlp(params[k], inputs[k]) for k in params}


def init_global(key: Array, d_ins: dict[str, int],
                n_components: dict[str, int], hidden: tuple[int, ...]
                ) -> dict[str, dict[str, Array]]:
  """One MLP over every product's input concatenated (in sorted order of
  the products) to all their logits: `Σ_k i_k → hidden → Σ_k C_k`."""
  return init_mlp(key, (sum(d_ins.values()), *hidden,
                        sum(n_components.values())))


def global_(params: dict[str, dict[str, Array]], inputs: dict[str, Array],
            n_components: dict[str, int]) -> dict[str, Array]:
  """`{k: z_k [..., C_k]}`: the concatenated inputs through one MLP, its
  output split back per product (sorted order)."""
  names = sorted(inputs)
  z = mlp(params, jnp.concatenate([inputs[k] for k in names], axis=-1))
  ends = list(itertools.accumulate(n_components[k] for k in names))
  return dict(zip(names, jnp.split(z, ends[:-1], axis=-1), strict=True))
