"""The transformer against a hand-written einsum forward; causality."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax.models import transformer as T


def layer_norm(x, p, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def by_hand(params, tokens, c):
  """The same model written out: embeddings, then per block pre-LN causal
  attention with the 3-D kernels and a GELU MLP, final LN, unembedding."""
  p = params["params"]
  E = p["embed"]["embedding"]
  x = E[tokens] + p["pos"][:tokens.shape[-1]]
  T_ = tokens.shape[-1]
  for layer in range(c.n_layers):
    b = p[f"block_{layer}"]
    h = layer_norm(x, b["ln_attn"])
    q, k, v = (jnp.einsum("btd,dhe->bthe", h, b[n]["kernel"]) + b[n]["bias"]
               for n in ("query", "key", "value"))
    s = jnp.einsum("bthe,bshe->bhts", q, k) / math.sqrt(c.d_head)
    s = jnp.where(np.tril(np.ones((T_, T_), bool)), s, -jnp.inf)
    o = jnp.einsum("bhts,bshe->bthe", jax.nn.softmax(s, -1), v)
    x = x + jnp.einsum("bthe,hed->btd", o, b["out"]["kernel"]) + (
        b["out"]["bias"])
    h = layer_norm(x, b["ln_mlp"])
    h = jax.nn.gelu(h @ b["mlp_in"]["kernel"] + b["mlp_in"]["bias"],
                    approximate=False)
    x = x + h @ b["mlp_out"]["kernel"] + b["mlp_out"]["bias"]
  x = layer_norm(x, p["ln_final"])
  return x @ (E.T if c.tied else p["unembed"]["kernel"])


@pytest.mark.parametrize("tied", [True, False])
def test_forward_equals_the_einsum_version(tied):
  c = T.TransformerConfig(n_layers=2, d_model=16, n_heads=4, d_mlp=32,
                          context=8, tied=tied)
  params = T.init(jax.random.PRNGKey(0), c)
  # Larger weights than the init's, so every term matters.
  params = jax.tree.map(lambda a: a * 10.0 if a.ndim >= 2 else a, params)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 8), 0, 256)
  logits, acts = T.apply(params, tokens, c, with_acts=True)
  np.testing.assert_allclose(logits, by_hand(params, tokens, c), rtol=2e-4,
                             atol=2e-4)
  assert logits.shape == (3, 8, 256) and sorted(acts) == ["resid_0",
                                                         "resid_1"]
  blk = params["params"]["block_0"]
  assert blk["query"]["kernel"].shape == (16, 4, 4)
  assert blk["out"]["kernel"].shape == (4, 4, 16)
  assert ("unembed" in params["params"]) == (not tied)


def test_positions_see_only_the_past_and_the_default_sizes():
  c = T.TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16,
                          context=6)
  params = T.init(jax.random.PRNGKey(0), c)
  a = jnp.array([[1, 2, 3, 4, 5, 6]])
  b = a.at[0, 4].set(200)
  la, lb = T.apply(params, a, c), T.apply(params, b, c)
  np.testing.assert_allclose(la[0, :4], lb[0, :4], atol=1e-6)
  assert not np.allclose(la[0, 4:], lb[0, 4:])
  with pytest.raises(ValueError, match="exceed the context"):
    T.apply(params, jnp.zeros((1, 7), jnp.int32), c)
  d = T.TransformerConfig()
  assert (d.n_layers, d.d_model, d.n_heads, d.d_mlp, d.context, d.vocab) == (
      2, 128, 4, 512, 128, 256)
  with pytest.raises(ValueError, match="multiple of n_heads"):
    T.TransformerConfig(d_model=10, n_heads=4)


def test_loss_is_the_mean_next_token_cross_entropy():
  c = T.TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16,
                          context=5)
  params = T.init(jax.random.PRNGKey(0), c)
  window = jnp.array([[3, 1, 4, 1, 5, 9]])
  logp = jax.nn.log_softmax(T.apply(params, window[:, :-1], c), -1)
  want = -np.mean([logp[0, t, window[0, t + 1]] for t in range(5)])
  np.testing.assert_allclose(T.next_token_loss(params, window, c), want,
                             rtol=1e-6)
