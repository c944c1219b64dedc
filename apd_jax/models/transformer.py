"""A decoder-only transformer in Flax linen, as a target to decompose.

    model = Transformer(TransformerConfig())          # 2 layers, d 128
    params = model.init(key, tokens)                  # tokens [B, T] ints
    logits = apply(params, tokens, config)            # [B, T, vocab]
    logits, acts = apply(params, tokens, config, with_acts=True)

Pre-LayerNorm blocks `x += Attn(LN(x)); x += MLP(LN(x))` with causal
multi-head attention and a GELU MLP, learned positions, a final LayerNorm
and a tied (`x Eᵀ`) or untied unembedding. The attention weights are 3-D,
as `nn.DenseGeneral` stores them: `query`, `key`, `value` kernels
`[d_model, heads, d_head]` and `out` `[heads, d_head, d_model]`. `acts`
holds the residual stream after each block (`resid_l`). Bytes are the
tokens (vocabulary 256), so no tokenizer is needed.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from apd_jax.core import losses

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab: int = 256
  n_layers: int = 2
  d_model: int = 128
  n_heads: int = 4
  d_mlp: int = 512
  context: int = 128
  tied: bool = True              # unembedding = embeddingᵀ

  def __post_init__(self):
    if self.d_model % self.n_heads:
      raise ValueError(f"d_model={self.d_model} is not a multiple of "
                       f"n_heads={self.n_heads}")

  @property
  def d_head(self) -> int:
    return self.d_model // self.n_heads


def causal_attention(q: Array, k: Array, v: Array) -> Array:
  """`softmax(q kᵀ / √d_head + causal mask) v` for `q, k, v [..., T, H,
  d_head]`: each position attends to itself and the positions before it."""
  T = q.shape[-3]
  scores = jnp.einsum("...thd,...shd->...hts", q, k) / math.sqrt(q.shape[-1])
  mask = jnp.tril(jnp.ones((T, T), bool))
  scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
  return jnp.einsum("...hts,...shd->...thd", jax.nn.softmax(scores, -1), v)


class Block(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    h = nn.LayerNorm(name="ln_attn")(x)
    q, k, v = (nn.DenseGeneral((c.n_heads, c.d_head), name=n)(h)
               for n in ("query", "key", "value"))
    x = x + nn.DenseGeneral(c.d_model, axis=(-2, -1), name="out")(
        causal_attention(q, k, v))
    h = nn.LayerNorm(name="ln_mlp")(x)
    h = jax.nn.gelu(nn.Dense(c.d_mlp, name="mlp_in")(h), approximate=False)
    return x + nn.Dense(c.d_model, name="mlp_out")(h)


class Transformer(nn.Module):
  """Tokens `[..., T]` (T ≤ context) to logits `[..., T, vocab]`; with
  `with_acts`, also `{resid_l: [..., T, d_model]}`."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, tokens: Array, with_acts: bool = False):
    c = self.config
    if tokens.shape[-1] > c.context:
      raise ValueError(f"{tokens.shape[-1]} tokens exceed the context of "
                       f"{c.context}")
    embed = nn.Embed(c.vocab, c.d_model, name="embed",
                     embedding_init=nn.initializers.normal(0.02))
    pos = self.param("pos", nn.initializers.normal(0.02),
                     (c.context, c.d_model))
    x = embed(tokens) + pos[:tokens.shape[-1]]
    acts = {}
    for layer in range(c.n_layers):
      x = Block(c, name=f"block_{layer}")(x)
      acts[f"resid_{layer}"] = x
    x = nn.LayerNorm(name="ln_final")(x)
    logits = (embed.attend(x) if c.tied
              else nn.Dense(c.vocab, use_bias=False, name="unembed")(x))
    return (logits, acts) if with_acts else logits


def init(key: Array, config: TransformerConfig) -> dict:
  """The params pytree (`{'params': ...}`) of a fresh model."""
  return Transformer(config).init(key, jnp.zeros((1, config.context),
                                                 jnp.int32))


def apply(params: dict, tokens: Array, config: TransformerConfig,
          with_acts: bool = False):
  """The model's logits on `tokens` (and the residual stream)."""
  return Transformer(config).apply(params, tokens, with_acts)


def next_token_loss(params: dict, window: Array, config: TransformerConfig,
                    chunk: int | None = None) -> Array:
  """Mean cross-entropy (nats per token) of predicting `window[..., 1:]`
  from `window[..., :-1]`, computed `chunk` positions at a time
  (`losses.cross_entropy_rows`)."""
  logits = apply(params, window[..., :-1], config)
  return jnp.mean(losses.cross_entropy_rows(logits, window[..., 1:],
                                            chunk=chunk))
