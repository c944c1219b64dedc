import jax
import jax.numpy as jnp
import numpy as np

from apd_jax.core import metrics


def one_column_per_component(W, scale=1.0):
  """P_c = W restricted to column c (the ideal TMS decomposition)."""
  return jnp.stack([scale * W * (jnp.arange(W.shape[1]) == c)
                    for c in range(W.shape[1])])


def test_ideal_decomposition_scores_one(keys):
  W = jax.random.normal(keys[0], (2, 5))
  P = one_column_per_component(W)
  np.testing.assert_allclose(metrics.mmcs(W, P), 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics.ml2r(W, P), 1.0, rtol=1e-6)


def test_shrunk_components_halve_ml2r(keys):
  W = jax.random.normal(keys[0], (2, 5))
  P = one_column_per_component(W, 0.5)
  np.testing.assert_allclose(metrics.mmcs(W, P), 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics.ml2r(W, P), 0.5, rtol=1e-6)


def test_mmcs_hand_value():
  W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  # One component pointing at 45 degrees to both columns.
  P = jnp.array([[[1.0, 1.0], [1.0, 1.0]]])
  np.testing.assert_allclose(metrics.mmcs(W, P), 2 ** -0.5, rtol=1e-6)
  np.testing.assert_allclose(metrics.ml2r(W, P), 2 ** 0.5, rtol=1e-6)


def test_l0_and_dead_components():
  masks = jnp.array([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
  assert float(metrics.l0(masks)) == 1.5
  np.testing.assert_array_equal(metrics.dead_components(masks), [1, 3])
