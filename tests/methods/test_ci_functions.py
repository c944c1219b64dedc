"""The causal-importance functions: values, and the blocked backward pass
against autodiff of the plain expression and against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_gradients_match_finite_differences
from conftest import x64

from apd_jax.methods import ci_functions as ci


def _mlp(C, d, seed=0):
  mlp = ci.init_scalar_mlp(jax.random.PRNGKey(seed), C, d)
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed + 1))
  return dict(mlp, b1=jax.random.normal(k1, (C, d)) * 0.5,
              b2=jax.random.normal(k2, (C,)) * 0.1)


def _loss(fn):
  # A nonlinear read-out, so every row gets its own incoming gradient.
  return lambda m, h: jnp.sum(jnp.sin(3 * fn(m, h)))


def test_values_are_the_formula():
  mlp = _mlp(3, 4)
  h = jax.random.normal(jax.random.PRNGKey(5), (6, 3))
  want = np.zeros((6, 3))
  for n in range(6):
    for c in range(3):
      pre = np.asarray(mlp["w1"][c]) * float(h[n, c]) + np.asarray(
          mlp["b1"][c])
      gelu = np.asarray(jax.nn.gelu(pre, approximate=False))
      want[n, c] = gelu @ np.asarray(mlp["w2"][c]) + float(mlp["b2"][c])
  np.testing.assert_allclose(ci.scalar_mlp(mlp, h), want, rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("shape", [(37, 5), (3, 13, 5), (1, 5)])
def test_blocked_gradients_equal_autodiff(shape, monkeypatch):
  # Small blocks, so that several blocks and a padded last one are walked.
  monkeypatch.setattr(ci, "BLOCK_ELEMENTS", 5 * 7 * 8)
  C, d = shape[-1], 7
  mlp = _mlp(C, d)
  h = jax.random.normal(jax.random.PRNGKey(2), shape) * 1.5

  def plain(m, h):
    with ci.unblocked():
      return ci.scalar_mlp(m, h)

  want = jax.grad(_loss(plain), argnums=(0, 1))(mlp, h)
  got = jax.grad(_loss(ci.scalar_mlp), argnums=(0, 1))(mlp, h)
  np.testing.assert_allclose(ci.scalar_mlp(mlp, h), plain(mlp, h),
                             rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)


def test_gradients_match_finite_differences():
  with x64():
    mlp = jax.tree.map(lambda a: a.astype(jnp.float64), _mlp(2, 3))
    h = jax.random.normal(jax.random.PRNGKey(3), (4, 2), jnp.float64)
    assert_gradients_match_finite_differences(_loss(ci.scalar_mlp), mlp, h)


def test_block_rows():
  assert ci._block_rows(4096, 200, 16) == 128     # 2**19 // 3200 -> 128
  assert ci._block_rows(4096, 20, 16) == 1024
  assert ci._block_rows(3, 20, 16) == 3           # never more than N
  assert ci._block_rows(10, 10 ** 6, 16) == 1


def test_gelu_is_exact():
  x = jnp.linspace(-6, 6, 1001)
  np.testing.assert_allclose(ci.gelu(x), jax.nn.gelu(x, approximate=False),
                             atol=2e-6)
  value, slope = ci._gelu_and_slope(x)
  np.testing.assert_allclose(value, ci.gelu(x), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(slope, jax.vmap(jax.grad(ci.gelu))(x),
                             rtol=1e-5, atol=1e-6)


# -- functions of whole activations -------------------------------------------

D_INS, CS = {"a": 3, "b": 2}, {"a": 4, "b": 5}


def _inputs(lead=(6,), seed=7, dtype=jnp.float32):
  return {k: jax.random.normal(jax.random.PRNGKey(seed + j), lead + (d,),
                               dtype)
          for j, (k, d) in enumerate(sorted(D_INS.items()))}


def _by_hand(layers, a):
  """The MLP written out with numpy: GELU between layers, none after."""
  a = np.asarray(a, np.float64)
  for j in range(len(layers)):
    layer = layers[str(j)]
    a = a @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"])
    if j < len(layers) - 1:
      a = np.asarray(jax.nn.gelu(a, approximate=False))
  return a


def test_layerwise_and_global_shapes_and_values():
  key = jax.random.PRNGKey(0)
  lw = ci.init_layerwise(key, D_INS, CS, hidden=(8,))
  assert [layer["w"].shape for layer in lw["a"].values()] == [(3, 8), (8, 4)]
  gl = ci.init_global(key, D_INS, CS, hidden=(8, 6))
  assert [layer["w"].shape for layer in gl.values()] == [(5, 8), (8, 6), (6, 9)]
  assert all(float(jnp.abs(layer["b"]).max()) == 0 for layer in gl.values())
  for lead in [(6,), (2, 5)]:            # a batch, or a batch of positions
    x = _inputs(lead)
    z = ci.layerwise(lw, x)
    g = ci.global_(gl, x, CS)
    for k in D_INS:
      assert z[k].shape == g[k].shape == lead + (CS[k],)
      np.testing.assert_allclose(z[k], _by_hand(lw[k], x[k]), rtol=1e-5,
                                 atol=1e-6)
    both = _by_hand(gl, np.concatenate([x["a"], x["b"]], axis=-1))
    np.testing.assert_allclose(g["a"], both[..., :4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["b"], both[..., 4:], rtol=1e-5, atol=1e-6)
  # Global: product b's logits depend on product a's input; layerwise: not.
  x = _inputs()
  moved = dict(x, a=x["a"] + 1.0)
  assert np.array_equal(ci.layerwise(lw, moved)["b"], ci.layerwise(lw, x)["b"])
  assert not np.allclose(ci.global_(gl, moved, CS)["b"],
                         ci.global_(gl, x, CS)["b"])


@pytest.mark.parametrize("kind", ["layerwise", "global"])
def test_whole_activation_gradients_match_finite_differences(kind):
  with x64():
    key = jax.random.PRNGKey(1)
    if kind == "layerwise":
      params = ci.init_layerwise(key, D_INS, CS, hidden=(4,))
      fn = ci.layerwise
    else:
      params = ci.init_global(key, D_INS, CS, hidden=(4,))
      fn = lambda p, x: ci.global_(p, x, CS)  # noqa: E731
    params = jax.tree.map(lambda a: a.astype(jnp.float64) + 0.1, params)
    x = _inputs((3,), dtype=jnp.float64)

    @jax.jit
    def f(p, x):
      return sum(jnp.sum(jnp.sin(2 * z)) for z in fn(p, x).values())

    assert_gradients_match_finite_differences(f, params, x)
