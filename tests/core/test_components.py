import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax.core import components as C
from apd_jax.core import losses


def test_component_and_masked_weights_match_einsum(keys):
  comps = C.init_random(keys[0], {"a": (4, 3)}, n_components=5,
                        rank={"a": 2})
  P = C.component_weights(comps)["a"]
  assert P.shape == (5, 4, 3)
  np.testing.assert_allclose(P[2], comps.U["a"][2] @ comps.V["a"][2],
                             rtol=1e-5, atol=1e-6)
  mask = jnp.array([1.0, 0.0, 1.0, 0.0, 0.5])
  W = C.masked_weights({"a": P}, mask)["a"]
  np.testing.assert_allclose(W, P[0] + P[2] + 0.5 * P[4], rtol=1e-5,
                             atol=1e-6)


def test_random_init_shapes_and_scale(keys):
  comps = C.init_random(keys[0], {"a": (300, 200)}, n_components=40,
                        rank={"a": 100}, gain=2.0)
  assert comps.U["a"].shape == (40, 300, 100)
  assert comps.V["a"].shape == (40, 100, 200)
  assert comps.n_components == 40
  # Xavier fans of a [C, a, b] tensor: fan_in = a*b, fan_out = C*b.
  np.testing.assert_allclose(float(jnp.std(comps.U["a"])),
                             2.0 * (2 / (100 * (300 + 40))) ** 0.5, rtol=0.02)
  np.testing.assert_allclose(float(jnp.std(comps.V["a"])),
                             2.0 * (2 / (200 * (100 + 40))) ** 0.5, rtol=0.02)


@pytest.mark.parametrize("shape,n,m", [((2, 5), 5, 3), ((6, 4), 2, 2),
                                       ((3, 7), 3, 1)])
def test_svd_init_sums_to_target_exactly(keys, shape, n, m):
  W = jax.random.normal(keys[1], shape)
  comps = C.init_svd(keys[2], {"w": W}, n_components=n, rank={"w": m})
  summed = C.summed_weights(C.component_weights(comps))
  assert float(losses.faithfulness({"w": W}, summed)) < 1e-10
  # Every component has gradient signal: no all-zero U.
  assert bool(jnp.all(jnp.linalg.norm(comps.U["w"], axis=1) > 0))


def test_svd_init_rejects_too_little_rank(keys):
  W = jax.random.normal(keys[1], (5, 5))
  with pytest.raises(ValueError, match="n_components\\*rank"):
    C.init_svd(keys[2], {"w": W}, n_components=2, rank={"w": 2})


def test_normalize_u_gives_unit_columns(keys):
  comps = C.init_random(keys[0], {"a": (4, 3)}, n_components=3,
                        rank={"a": 2})
  U = C.normalize_u(comps).U["a"]
  np.testing.assert_allclose(jnp.linalg.norm(U, axis=1), 1.0, rtol=1e-6)


def test_n_parameters_counts_each_leaf_once(keys):
  comps = C.init_random(keys[0], {"a": (4, 3), "b": (3, 2)}, n_components=3,
                        rank={"a": 2, "b": 1})
  assert C.n_parameters(comps) == 12 + 6
