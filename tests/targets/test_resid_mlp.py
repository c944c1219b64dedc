"""The residual-MLP target: construction, forward pass, labels, data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax.targets import resid_mlp


@pytest.mark.parametrize("n_layers,width", [(1, 50), (2, 25), (3, 17)])
def test_shapes_and_unit_norm_embedding(n_layers, width):
  d_mlp = 51 if n_layers == 3 else 50
  p = resid_mlp.init(jax.random.PRNGKey(0), n_layers=n_layers, d_mlp=d_mlp)
  assert p["W_E"].shape == (100, 1000)
  np.testing.assert_allclose(jnp.linalg.norm(p["W_E"], axis=1), 1.0,
                             rtol=1e-5)
  assert len(p["layers"]) == n_layers
  for layer in p["layers"]:
    assert layer["W_in"].shape == (1000, width)
    assert layer["W_out"].shape == (width, 1000)


def test_uneven_split_raises():
  with pytest.raises(ValueError, match="does not split"):
    resid_mlp.init(jax.random.PRNGKey(0), n_layers=3, d_mlp=50)


def test_forward_pass_by_hand():
  W_E = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])       # 2 features, d 3
  layer = {"W_in": jnp.array([[1.0], [-1.0], [0.0]]),      # 1 neuron
           "W_out": jnp.array([[2.0, 0.0, 1.0]])}
  params = {"W_E": W_E, "layers": [layer, layer]}
  x = jnp.array([[0.5, 0.25]])
  # layer 1: h = (0.5, 0.25, 0); relu(0.25) = 0.25 -> h += (0.5, 0, 0.25)
  # layer 2: h = (1.0, 0.25, 0.25); relu(0.75) -> h += (1.5, 0, 0.75)
  y, acts = resid_mlp.apply(params, x)
  np.testing.assert_allclose(y, [[2.5, 0.25]], rtol=1e-6)
  np.testing.assert_allclose(acts["post_relu_0"], [[0.25]])
  np.testing.assert_allclose(acts["post_relu_1"], [[0.75]])
  np.testing.assert_allclose(acts["['layers'][1]['W_in']"], [[1.0, 0.25, 0.25]])
  assert acts["['layers'][0]['W_out']"] is acts["post_relu_0"]


def test_labels_are_x_plus_relu_x():
  x = jnp.array([[-0.5, 0.0, 0.7]])
  np.testing.assert_allclose(resid_mlp.labels(x), [[-0.5, 0.0, 1.4]])


def test_sample_sparsity_and_range():
  x = resid_mlp.sample(jax.random.PRNGKey(1), 20_000, n_features=100,
                       feature_probability=0.01)
  on = x != 0
  assert abs(float(on.mean()) - 0.01) < 0.001
  assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
  assert abs(float(x[on].mean())) < 0.02     # U[-1, 1] has mean 0


def test_training_lowers_the_loss():
  p, losses = resid_mlp.train(jax.random.PRNGKey(0), n_features=10,
                              d_resid=40, d_mlp=6, n_layers=2,
                              feature_probability=0.1, steps=300,
                              batch_size=256)
  assert float(losses[-20:].mean()) < 0.5 * float(losses[:5].mean())
  # The embedding stays fixed.
  p0 = resid_mlp.init(jax.random.split(jax.random.PRNGKey(0))[0],
                      n_features=10, d_resid=40, d_mlp=6, n_layers=2)
  np.testing.assert_array_equal(p["W_E"], p0["W_E"])
