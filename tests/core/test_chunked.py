"""KL and cross-entropy computed a chunk of rows at a time equal the plain
expressions, in value and gradient, on a tiny language model's logits; the
compiled gradient holds no copy of the logits' size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax.core import chunked
from apd_jax.core import losses

VOCAB, D = 61, 8


def plain_kl(p_logits, q_logits):
  logp = jax.nn.log_softmax(p_logits, -1)
  logq = jax.nn.log_softmax(q_logits, -1)
  return jnp.mean(jnp.sum(jnp.exp(logp) * (logp - logq), -1))


def plain_ce(logits, labels):
  logp = jax.nn.log_softmax(logits, -1)
  return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], -1))


def tiny_lm(params, tokens):
  """Embedding, a residual tanh layer, tied unembedding: `[B, T, V]`."""
  h = params["embed"][tokens]
  h = h + jnp.tanh(h @ params["w"])
  return h @ params["embed"].T


def lm_params(seed):
  rng = np.random.default_rng(seed)
  return {"embed": rng.normal(size=(VOCAB, D)).astype(np.float32),
          "w": rng.normal(size=(D, D)).astype(np.float32) / 3}


def assert_trees_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_kl_and_cross_entropy_in_chunks_on_a_tiny_lm():
  """27 positions in chunks of 5 (the last overlaps the one before it):
  the values and the gradients in the model's params and in the target's
  logits are those of the plain expressions."""
  windows = np.random.default_rng(2).integers(0, VOCAB, (3, 10))
  x, nxt = windows[:, :-1], windows[:, 1:]
  params = lm_params(1)
  y = tiny_lm(lm_params(0), x)

  @jax.jit
  def losses_and_grads(params, y):
    def kl(fn):
      return jax.value_and_grad(lambda p, y: fn(y, tiny_lm(p, x)),
                                (0, 1))(params, y)

    def ce(fn):
      return jax.value_and_grad(lambda p: fn(tiny_lm(p, x), nxt))(params)

    return (kl(plain_kl), kl(lambda a, b: losses.kl(a, b, chunk=5)),
            ce(plain_ce), ce(lambda a, b: jnp.mean(
                losses.cross_entropy_rows(a, b, chunk=5))))

  kl, kl_chunked, ce, ce_chunked = losses_and_grads(params, y)
  assert float(kl[0]) > 0.1 and float(ce[0]) > 0.1
  assert_trees_close(kl_chunked, kl)
  assert_trees_close(ce_chunked, ce)
  rows = losses.cross_entropy_rows(tiny_lm(params, x), nxt, chunk=4)
  assert rows.shape == (3, 9)


def test_kl_rows_in_chunks_and_by_default():
  """14 rows in chunks of 3 (the last overlaps), and by default (one)."""
  p, q = np.random.default_rng(3).normal(size=(2, 2, 7, 30)).astype(
      np.float32)

  @jax.jit
  def both(p, q):
    return (jax.value_and_grad(plain_kl, (0, 1))(p, q),
            jax.value_and_grad(lambda a, b: losses.kl(a, b, chunk=3),
                               (0, 1))(p, q),
            losses.kl_rows(p, q, chunk=3), losses.kl(p, q))

  want, got, rows, default = both(p, q)
  assert_trees_close(got, want)
  assert rows.shape == (2, 7)
  np.testing.assert_allclose(rows.mean(), want[0], rtol=1e-6)
  np.testing.assert_allclose(default, want[0], rtol=1e-6)


def test_the_gradient_holds_nothing_of_the_logits_size():
  """`[64, 4096]` logits in chunks of 8 rows: the backward's temporaries
  are a few chunks, not the two `[64, 4096]` arrays of the plain form."""
  spec = jax.ShapeDtypeStruct((64, 4096), jnp.float32)
  size = 64 * 4096 * 4

  def temp(fn):
    grad = jax.jit(jax.grad(lambda p, q: fn(jax.lax.stop_gradient(p), q),
                            1))
    return grad.lower(spec, spec).compile().memory_analysis(
        ).temp_size_in_bytes

  assert temp(plain_kl) >= 2 * size
  assert temp(lambda p, q: losses.kl(p, q, chunk=8)) < size / 2


def test_chunk_must_be_positive_and_defaults_to_a_few_mib():
  assert chunked.default_chunk(262_144) == 16
  assert chunked.default_chunk(256) == 16_384
  with pytest.raises(ValueError, match="chunk must be positive"):
    losses.kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), chunk=0)
