"""The causal-importance transformer: chunks, shapes, the norm, rotary
embeddings' relative positions, one block against a hand computation, and
gradients against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_gradients_match_finite_differences
from conftest import x64

from apd_jax.methods import ci_functions
from apd_jax.methods import ci_transformer as ct

D_INS = {"b": 3, "a": 5, "c": 2}
CS = {"a": 4, "b": 2, "c": 3}


def _inputs(key, lead=(), T=6, dtype=jnp.float32):
  return {k: jax.random.normal(jax.random.fold_in(key, j),
                               (*lead, T, d)).astype(dtype)
          for j, (k, d) in enumerate(sorted(D_INS.items()))}


def test_chunks_split_the_sorted_products():
  assert ct.chunks(("c", "a", "b"), 1) == (("a", "b", "c"),)
  assert ct.chunks(("c", "a", "b"), 3) == (("a",), ("b",), ("c",))
  assert ct.chunks(("c", "a", "b", "d", "e"), 2) == (("a", "b", "c"),
                                                     ("d", "e"))
  with pytest.raises(ValueError, match="ci_chunks"):
    ct.chunks(("a", "b"), 3)


@pytest.mark.parametrize("n_chunks", [1, 2, 3])
def test_shapes_and_batch_axes_ride_along(n_chunks):
  params = ct.init(jax.random.PRNGKey(0), D_INS, CS, n_chunks=n_chunks,
                   d_model=8, n_blocks=2, n_heads=2, hidden=(16,))
  assert len(params) == n_chunks
  xs = _inputs(jax.random.PRNGKey(1), lead=(3,))
  z = ct.apply(params, xs, CS, n_heads=2)
  assert {k: v.shape for k, v in z.items()} == {
      k: (3, 6, c) for k, c in CS.items()}
  one = ct.apply(params, {k: v[1] for k, v in xs.items()}, CS, n_heads=2)
  for k in CS:
    np.testing.assert_allclose(one[k], z[k][1], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="even head width"):
    ct.init(jax.random.PRNGKey(0), D_INS, CS, d_model=6, n_heads=2)


def test_rms_has_unit_root_mean_square():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 7)) * 3.0
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(ct.rms(x) ** 2, -1)), 1.0,
                             rtol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 8))
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 8))
  T = 7
  rq = ct.rotary(jnp.broadcast_to(q, (T, 1, 8)))[:, 0]
  rk = ct.rotary(jnp.broadcast_to(k, (T, 1, 8)))[:, 0]
  scores = rq @ rk.T                         # [T, T], Toeplitz
  for d in range(-T + 1, T):
    diag = jnp.diagonal(scores, offset=d)
    np.testing.assert_allclose(diag, diag[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(rq, axis=-1),
                             jnp.linalg.norm(q), rtol=1e-5)
  # Position 0 is not rotated; position 1 rotates pair (0, 4) by 1 radian.
  np.testing.assert_allclose(rq[0], q[0, 0], rtol=1e-6)
  c, s = np.cos(1.0), np.sin(1.0)
  np.testing.assert_allclose(rq[1, 0], c * q[0, 0, 0] - s * q[0, 0, 4],
                             rtol=1e-5)


def test_one_block_by_hand():
  params = ct.init(jax.random.PRNGKey(3), {"a": 3}, {"a": 2}, d_model=4,
                   n_blocks=1, n_heads=1, hidden=(5,))["0"]
  a = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (3, 3)),
                 np.float64)
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)

  def rms(x):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True)
                       + np.finfo(np.float32).eps)

  def rot(x):                       # [T, 4], one head, pairs (0, 2), (1, 3)
    out = x.copy()
    for t in range(x.shape[0]):
      for j, f in enumerate((1.0, 10_000.0 ** -0.5)):
        c, s = np.cos(t * f), np.sin(t * f)
        out[t, j] = c * x[t, j] - s * x[t, j + 2]
        out[t, j + 2] = s * x[t, j] + c * x[t, j + 2]
    return out

  b = p["blocks"]["0"]
  h = rms(a) @ p["in"]["w"] + p["in"]["b"]
  n = rms(h)
  q, k, v = rot(n @ b["q"]), rot(n @ b["k"]), n @ b["v"]
  s = q @ k.T / 2.0
  w = np.exp(s - s.max(-1, keepdims=True))
  h = h + (w / w.sum(-1, keepdims=True)) @ v @ b["o"]
  n = rms(h)
  m = b["mlp"]
  hid = np.asarray(ci_functions.gelu(jnp.asarray(n @ m["0"]["w"]
                                                 + m["0"]["b"])))
  h = h + hid @ m["1"]["w"] + m["1"]["b"]
  want = h @ p["out"]["w"] + p["out"]["b"]
  got = ct.apply({"0": params}, {"a": jnp.asarray(a, jnp.float32)}, {"a": 2},
                 n_heads=1)["a"]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gradients_match_finite_differences():
  with x64():
    params = ct.init(jax.random.PRNGKey(0), {"a": 2, "b": 3},
                     {"a": 2, "b": 1}, n_chunks=1, d_model=4, n_blocks=1,
                     n_heads=2, hidden=(3,))
    params = jax.tree.map(lambda v: v.astype(jnp.float64) + 0.05, params)
    xs = {k: jax.random.normal(jax.random.PRNGKey(j), (3, d), jnp.float64)
          for j, (k, d) in enumerate((("a", 2), ("b", 3)))}

    def f(params, xs):
      z = ct.apply(params, xs, {"a": 2, "b": 1}, n_heads=2)
      return sum(jnp.sum(jnp.sin(v)) for v in z.values())

    assert_gradients_match_finite_differences(jax.jit(f), params, xs)
