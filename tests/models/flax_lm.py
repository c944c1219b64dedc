"""A decoder-only LM built from Flax's own layers, in linen and in NNX.

Written as it would be without apd_jax in mind: RoPE, RMSNorm, grouped-query
attention with a fused key/value kernel, a gated GELU MLP with a stacked
kernel and tied embeddings. The kernels keep Flax's layouts:

- q `[heads, d_model, d_head]` (`Einsum`, contracted on axis 1);
- kv `[2, kv_heads, d_model, d_head]` (`Einsum`, contracted on axis 2);
- o `[heads, d_head, d_model]` (`DenseGeneral`, contracted on axes 0, 1);
- gating `[2, d_ff, d_model]` (`Einsum`, contracted on axis 2);
- down `[d_ff, d_model]` (`DenseGeneral`).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

D, H, G, K, F = 16, 2, 1, 8, 32   # d_model, heads, kv heads, d_head, d_ff
VOCAB, LAYERS, T = 64, 2, 8       # vocabulary, layers, tokens
KERNELS = r"\['(q|kv|o|gating|down)'\]\['kernel'\]"


def rope(x, base=10_000.0):
  """Rotary embedding of `x [B, T, heads, d_head]` by position."""
  half = x.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * freq
  sin, cos = jnp.sin(angle)[:, None], jnp.cos(angle)[:, None]
  a, b = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
  return out.astype(x.dtype)


def attend(q, k, v):
  """Causal grouped-query attention: `q [B, T, H, K]`, `k, v [B, T, G, K]`
  (query heads `g·H/G ... (g+1)·H/G − 1` share kv head g)."""
  b, t = q.shape[:2]
  q = rope(q).reshape(b, t, G, H // G, K)
  s = jnp.einsum("btgrk,bsgk->bgrts", q, rope(k)) / math.sqrt(K)
  causal = jnp.tril(jnp.ones((t, t), bool))
  s = jnp.where(causal, s, jnp.finfo(s.dtype).min)
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("bgrts,bsgk->btgrk", p, v).reshape(b, t, H, K)


# -- linen ---------------------------------------------------------------------


class Block(nn.Module):
  """Pre-norm attention, then a pre-norm gated GELU MLP."""

  @nn.compact
  def __call__(self, x):                                  # [B, T, D]
    h = nn.RMSNorm(name="attn_norm")(x)
    q = nn.Einsum((H, D, K), "btd,hdk->bthk", use_bias=False, name="q")(h)
    kv = nn.Einsum((2, G, D, K), "btd,sgdk->sbtgk", use_bias=False,
                   name="kv")(h)
    o = attend(q, kv[0], kv[1])
    x = x + nn.DenseGeneral(D, axis=(-2, -1), use_bias=False, name="o")(o)
    h = nn.RMSNorm(name="mlp_norm")(x)
    g = nn.Einsum((2, F, D), "btd,cfd->cbtf", use_bias=False,
                  name="gating")(h)
    h = nn.gelu(g[0]) * g[1]
    return x + nn.DenseGeneral(D, use_bias=False, name="down")(h)


class LM(nn.Module):
  """Tokens `[B, T]` to next-token logits `[B, T, VOCAB]`."""

  @nn.compact
  def __call__(self, tokens):
    embed = nn.Embed(VOCAB, D, name="embed")
    x = embed(tokens) * math.sqrt(D)
    for i in range(LAYERS):
      x = Block(name=f"layer_{i}")(x)
    return embed.attend(nn.RMSNorm(name="final_norm")(x))


# -- NNX -----------------------------------------------------------------------


class NNXBlock(nnx.Module):
  """`Block` in NNX: `nnx.Einsum` and `nnx.LinearGeneral` kernels."""

  def __init__(self, rngs):
    self.attn_norm = nnx.RMSNorm(D, rngs=rngs)
    self.q = nnx.Einsum("btd,hdk->bthk", (H, D, K), rngs=rngs)
    self.kv = nnx.Einsum("btd,sgdk->sbtgk", (2, G, D, K), rngs=rngs)
    self.o = nnx.LinearGeneral((H, K), D, axis=(-2, -1), use_bias=False,
                               rngs=rngs)
    self.mlp_norm = nnx.RMSNorm(D, rngs=rngs)
    self.gating = nnx.Einsum("btd,cfd->cbtf", (2, F, D), rngs=rngs)
    self.down = nnx.LinearGeneral(F, D, use_bias=False, rngs=rngs)

  def __call__(self, x):
    h = self.attn_norm(x)
    q, kv = self.q(h), self.kv(h)
    x = x + self.o(attend(q, kv[0], kv[1]))
    g = self.gating(self.mlp_norm(x))
    return x + self.down(nnx.gelu(g[0]) * g[1])


class NNXLM(nnx.Module):
  """`LM` in NNX."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
    self.layers = nnx.List([NNXBlock(rngs) for _ in range(LAYERS)])
    self.final_norm = nnx.RMSNorm(D, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens) * math.sqrt(D)
    for layer in self.layers:
      x = layer(x)
    return self.embed.attend(self.final_norm(x))


def sample_tokens(key, n):
  """`n` sequences of `T` random tokens."""
  return jax.random.randint(key, (n, T), 0, VOCAB)
