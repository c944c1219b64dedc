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


def test_identity_ci_errors_counts_what_the_matching_leaves():
  # 3 features, 5 subcomponents: feature i on column (2 - i), the rest off.
  ci = np.zeros((3, 5))
  ci[[0, 1, 2], [2, 1, 0]] = 1.0
  assert metrics.identity_ci_errors(ci) == 0
  weak = ci.copy()
  weak[1, 1] = 0.85                      # a matched entry below 0.9
  assert metrics.identity_ci_errors(weak) == 1
  shared = ci.copy()
  shared[0, 4] = 0.5                     # feature 0 also on a spare column
  shared[2, 2] = 0.2                     # feature 2 on feature 0's column
  assert metrics.identity_ci_errors(shared) == 2
  # One column for two features: one of them is matched elsewhere (0 there).
  merged = np.zeros((2, 3))
  merged[:, 0] = 1.0
  assert metrics.identity_ci_errors(merged) == 2   # a weak match, an extra
  assert metrics.identity_ci_errors(merged, off=1.0, on=0.0) == 0
