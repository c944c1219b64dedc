"""A causal-importance function for inputs with a position axis: a small
bidirectional transformer over the positions (VPD's language-model CI
function).

The products are split into chunks (one chunk: a global transformer over
every product's input; one product per chunk: a transformer per matrix),
and each chunk has its own transformer. For one sequence, with `a_k
[T, i_k]` the inputs of the chunk's products:

.. math::  h = [\\mathrm{rms}(a_1), …, \\mathrm{rms}(a_n)] W_{in} + b_{in}
           h ← h + \\mathrm{attn}(\\mathrm{rms}(h)),
           \\; h ← h + \\mathrm{mlp}(\\mathrm{rms}(h))   (× blocks)
           z = h W_{out} + b_{out} → [z_1, …, z_n]  ([T, C_k] each)

`rms(x) = x / √(mean(x²) + ε)` has no weight (ε the float32 machine
epsilon). Attention is bidirectional, multi-head, bias-free, with rotary
position embeddings (rotate-half, base 10000) on queries and keys; the MLP
is `d → hidden → d` with the exact GELU (`ci_functions.mlp`). Weights:
Kaiming normal (gain √2 into a GELU or the first projection, 1 into the
output and out of the MLP), attention projections `U(±1/√fan_in)`, biases
zero. Written for `[..., T, i]`: any leading axes (the batch) ride along.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from apd_jax.methods import ci_functions

Array = jax.Array
ROPE_BASE = 10_000.0
_EPS = float(jnp.finfo(jnp.float32).eps)


def chunks(labels: tuple[str, ...], n_chunks: int) -> tuple[tuple[str, ...],
                                                            ...]:
  """The products `labels` (sorted) split into `n_chunks` contiguous groups
  of sizes differing by at most one."""
  names = sorted(labels)
  if not 1 <= n_chunks <= len(names):
    raise ValueError(f"ci_chunks must be in [1, {len(names)}] (the "
                     f"products), got {n_chunks}")
  size, extra = divmod(len(names), n_chunks)
  ends = list(itertools.accumulate(size + (j < extra)
                                   for j in range(n_chunks)))
  return tuple(tuple(names[a:b]) for a, b in zip([0] + ends[:-1], ends,
                                                  strict=True))


def _dense(key: Array, d_in: int, d_out: int, gain: float) -> dict:
  return dict(w=jax.random.normal(key, (d_in, d_out)) * (gain / d_in) ** .5,
              b=jnp.zeros((d_out,)))


def _uniform(key: Array, d_in: int, d_out: int) -> Array:
  bound = d_in ** -0.5
  return jax.random.uniform(key, (d_in, d_out), minval=-bound, maxval=bound)


def init_one(key: Array, d_in: int, d_out: int, *, d_model: int,
             n_blocks: int, hidden: tuple[int, ...]) -> dict:
  """One transformer `d_in → d_model → … → d_out` (module docstring)."""
  ks = jax.random.split(key, 2 + n_blocks)
  blocks = {}
  for j in range(n_blocks):
    kq, kk, kv, ko, km = jax.random.split(ks[2 + j], 5)
    blocks[str(j)] = dict(
        q=_uniform(kq, d_model, d_model), k=_uniform(kk, d_model, d_model),
        v=_uniform(kv, d_model, d_model), o=_uniform(ko, d_model, d_model),
        mlp=ci_functions.init_mlp(km, (d_model, *hidden, d_model)))
  return {"in": _dense(ks[0], d_in, d_model, 2.0), "blocks": blocks,
          "out": _dense(ks[1], d_model, d_out, 1.0)}


def init(key: Array, d_ins: dict[str, int], n_components: dict[str, int],
         *, n_chunks: int = 1, d_model: int = 64, n_blocks: int = 2,
         n_heads: int = 4, hidden: tuple[int, ...] = (256,)) -> dict:
  """`{'0': transformer, …}`, one per chunk of the products (`chunks`)."""
  if d_model % n_heads or (d_model // n_heads) % 2:
    raise ValueError(f"ci_d_model ({d_model}) must be a multiple of "
                     f"ci_heads ({n_heads}) with an even head width (rotary "
                     f"embeddings rotate pairs)")
  return {str(j): init_one(jax.random.fold_in(key, j),
                           sum(d_ins[k] for k in group),
                           sum(n_components[k] for k in group),
                           d_model=d_model, n_blocks=n_blocks, hidden=hidden)
          for j, group in enumerate(chunks(tuple(d_ins), n_chunks))}


def rms(x: Array) -> Array:
  """`x / √(mean(x²) + ε)` over the last axis, no weight."""
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + _EPS)


def rotary(x: Array) -> Array:
  """Rotary position embedding of `x [..., T, heads, d_h]`: pairs `(j, j +
  d_h/2)` rotated by `t · base^(−2j/d_h)` at position `t`."""
  T, d_h = x.shape[-3], x.shape[-1]
  inv_freq = jax.lax.stop_gradient(
      ROPE_BASE ** -(jnp.arange(0, d_h, 2, dtype=jnp.float32) / d_h))
  angles = jnp.arange(T, dtype=jnp.float32)[:, None] * inv_freq  # [T, d_h/2]
  cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[:, None, :]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[:, None, :]
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def attention(block: dict, h: Array, n_heads: int) -> Array:
  """Bidirectional multi-head attention of `h [..., T, d]` on itself."""
  def heads(w):
    y = h @ w
    return y.reshape(*y.shape[:-1], n_heads, -1)        # [..., T, H, d_h]
  q, k, v = rotary(heads(block["q"])), rotary(heads(block["k"])), heads(
      block["v"])
  scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / q.shape[-1] ** 0.5
  out = jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(scores, -1), v)
  return out.reshape(*h.shape) @ block["o"]


def apply_one(params: dict, a: Array, n_heads: int) -> Array:
  """`[..., T, d_in] → [..., T, d_out]` through one transformer."""
  h = a @ params["in"]["w"] + params["in"]["b"]
  for j in range(len(params["blocks"])):
    block = params["blocks"][str(j)]
    h = h + attention(block, rms(h), n_heads)
    h = h + ci_functions.mlp(block["mlp"], rms(h))
  return h @ params["out"]["w"] + params["out"]["b"]


def apply(params: dict, inputs: dict[str, Array],
          n_components: dict[str, int], n_heads: int) -> dict[str, Array]:
  """`{k: z_k [..., T, C_k]}` from the products' inputs `{k: [..., T,
  i_k]}`: each chunk's inputs normalised, concatenated (sorted order),
  through its transformer, and split back."""
  groups = chunks(tuple(inputs), len(params))
  out = {}
  for j, group in enumerate(groups):
    a = jnp.concatenate([rms(inputs[k]) for k in group], axis=-1)
    z = apply_one(params[str(j)], a, n_heads)
    ends = list(itertools.accumulate(n_components[k] for k in group))
    out.update(zip(group, jnp.split(z, ends[:-1], axis=-1), strict=True))
  return out
