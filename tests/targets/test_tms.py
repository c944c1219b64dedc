import jax
import jax.numpy as jnp
import numpy as np

from apd_jax.targets import tms


def test_apply_is_relu_wt_w_x_plus_b(keys):
  p = tms.init(keys[0], n_features=5, n_hidden=2)
  p["b_final"] = jnp.arange(5.0) * 0.1
  x = jax.random.uniform(keys[1], (3, 5))
  want = jax.nn.relu(x @ p["W"].T @ p["W"] + p["b_final"])
  np.testing.assert_allclose(tms.apply(p, x), want, rtol=1e-5)


def test_identity_hidden_layers_change_nothing(keys):
  p = tms.init(keys[0], n_features=5, n_hidden=2, n_hidden_layers=2)
  assert len(p["hidden"]) == 2
  q = {k: v for k, v in p.items() if k != "hidden"}
  x = jax.random.uniform(keys[1], (3, 5))
  np.testing.assert_allclose(tms.apply(p, x), tms.apply(q, x), rtol=1e-6)


def test_sample_sparsity_and_range(keys):
  x = tms.sample(keys[0], 20000, n_features=5, feature_probability=0.05)
  on = x > 0
  np.testing.assert_allclose(float(on.mean()), 0.05, atol=0.005)
  assert float(x.max()) <= 1.0 and float(x.min()) == 0.0
  np.testing.assert_allclose(float(x[on].mean()), 0.5, atol=0.02)


def test_training_lowers_loss(keys):
  p, losses = tms.train(keys[0], n_features=5, n_hidden=2, steps=300,
                        batch_size=256)
  assert float(losses[-20:].mean()) < 0.5 * float(losses[:20].mean())
  assert "hidden" not in p


def test_untied_is_the_same_function_trained_tied(keys):
  tied, _ = tms.train(keys[0], n_features=5, n_hidden=2, steps=50,
                      batch_size=64)
  untied, _ = tms.train(keys[0], n_features=5, n_hidden=2, steps=50,
                        batch_size=64, untied=True)
  assert set(untied) == {"W", "W_up", "b_final"}
  np.testing.assert_array_equal(untied["W_up"], tied["W"])
  np.testing.assert_array_equal(untied["W"], tied["W"])
  x = jax.random.uniform(keys[1], (3, 5))
  np.testing.assert_array_equal(tms.apply(untied, x), tms.apply(tied, x))
  # The up use reads W_up: changing it changes the output, W alone not.
  other = dict(untied, W_up=untied["W_up"] * 2)
  assert not np.allclose(tms.apply(other, x), tms.apply(untied, x))
  assert set(tms.init(keys[0], n_features=5, n_hidden=2, untied=True)) == {
      "W", "W_up", "b_final"}
