"""Adversarial sources: Adam ascent steps computed by hand, projection onto
[0, 1], persistence of the moments across calls, scopes, and evaluation's
sign-PGD."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax.methods import adversarial as adv

TARGET = {"a": np.array([0.1, 0.9, 0.5, 1.5], np.float32),
          "b": np.array([[0.3, -0.2], [0.6, 0.8]], np.float32)}


def _concave(r):
  """`−Σ (r − t)²`: concave, maximal at the targets (clipped to [0, 1])."""
  return -sum(jnp.sum((r[n] - TARGET[n]) ** 2) for n in r)


def _state(seed=0):
  sources = {"a": jnp.array([0.5, 0.5, 0.2, 0.7]),
             "b": jnp.array([[0.9, 0.4], [0.1, 0.5]])}
  return adv.SourceState(sources, adv.optimizer().init(sources))


ascend = jax.jit(adv.ascend, static_argnums=(0, 2))


def test_scope_shapes():
  assert adv.scope_shape("shared", (8,)) == ()
  assert adv.scope_shape("shared", (8, 16)) == (16,)
  assert adv.scope_shape("shared", (8, 16), per_position=False) == ()
  assert adv.scope_shape("per_example", (8,)) == (8,)
  assert adv.scope_shape("per_example", (8, 16)) == (8, 16)
  assert adv.scope_shape("per_example", (8, 16), per_position=False) == (
      8, 1)
  with pytest.raises(ValueError, match="scope"):
    adv.scope_shape("global", (8,))


def test_init_and_expand():
  init = jax.jit(functools.partial(adv.init, n_components={"a": 3, "b": 5},
                                   lead_shape=(16,)))
  state = init(jax.random.PRNGKey(0))
  assert {n: r.shape for n, r in state.sources.items()} == {
      "a": (16, 4), "b": (16, 6)}
  for r in state.sources.values():
    assert float(r.min()) >= 0 and float(r.max()) <= 1
  assert int(state.opt_state.count) == 0
  big = adv.expand(state.sources, (8, 16))
  assert big["a"].shape == (8, 16, 4)
  np.testing.assert_array_equal(big["a"][3], state.sources["a"])


def test_shared_sources_gradient_sums_over_the_batch():
  r = jnp.array([0.2, 0.7, 0.4])
  x = jnp.arange(12.0).reshape(4, 3)
  g = jax.grad(lambda r: jnp.mean(jnp.sum(adv.expand(r, (4,)) * x, -1)))(r)
  np.testing.assert_allclose(g, x.mean(0), rtol=1e-6)


def test_one_and_two_ascent_steps_by_hand():
  r0 = np.array([0.3, 0.6, 0.995], np.float32)
  g1 = np.array([2.0, -0.5, 1.0], np.float32)
  g2 = np.array([-1.0, -0.5, 3.0], np.float32)
  lr, eps = 0.01, 1e-8
  src = {"a": jnp.asarray(r0)}
  state = adv.SourceState(src, adv.optimizer().init(src))
  step = jax.jit(adv.apply_ascent)
  s1 = step(state, {"a": g1})
  # Step 1: m̂ = g, v̂ = g², so r += lr g / (|g| + ε); the last is clipped.
  want1 = np.clip(r0 + lr * g1 / (np.abs(g1) + eps), 0, 1)
  np.testing.assert_allclose(s1.sources["a"], want1, rtol=1e-6)
  assert float(s1.sources["a"][2]) == 1.0
  # Step 2 with β1 = 0.5, β2 = 0.99.
  m = 0.5 * (0.5 * g1) + 0.5 * g2
  v = 0.99 * (0.01 * g1 ** 2) + 0.01 * g2 ** 2
  m_hat, v_hat = m / (1 - 0.5 ** 2), v / (1 - 0.99 ** 2)
  want2 = np.clip(want1 + lr * m_hat / (np.sqrt(v_hat) + eps), 0, 1)
  s2 = step(s1, {"a": g2})
  np.testing.assert_allclose(s2.sources["a"], want2, rtol=1e-6)
  assert int(s2.opt_state.count) == 2


def test_ascent_increases_a_concave_loss_and_stays_in_bounds():
  state = _state()
  losses = [float(_concave(state.sources))]
  for _ in range(5):
    state = ascend(_concave, state, 4, lr=0.05)
    losses.append(float(_concave(state.sources)))
  assert np.all(np.diff(losses) > 0), losses
  for n, r in state.sources.items():
    r = np.asarray(r)
    assert r.min() >= 0 and r.max() <= 1
    # Every source moved towards its target clipped to [0, 1].
    goal = np.clip(TARGET[n], 0, 1)
    start = np.asarray(_state().sources[n])
    assert np.all(np.abs(r - goal) <= np.abs(start - goal) + 1e-6)
  # Targets outside [0, 1] pin their sources to the bound.
  np.testing.assert_array_equal(state.sources["a"][3], 1.0)
  np.testing.assert_array_equal(state.sources["b"][0, 1], 0.0)


def test_projection_keeps_sources_in_the_unit_interval():
  w = {"a": jnp.array([1.0, -1.0, 3.0, -0.1]),
       "b": jnp.array([[5.0, -5.0], [0.2, -0.3]])}
  state = ascend(lambda r: sum(jnp.sum(w[n] * r[n]) for n in r), _state(),
                 3, lr=10.0)
  np.testing.assert_array_equal(state.sources["a"], [1, 0, 1, 0])
  np.testing.assert_array_equal(state.sources["b"], [[1, 0], [1, 0]])


def test_state_persists_across_calls():
  five = ascend(_concave, _state(), 5)
  three = ascend(_concave, _state(), 3)
  assert int(three.opt_state.count) == 3
  np.testing.assert_array_equal(three.opt_state.mu["a"] != 0, True)
  then_two = ascend(_concave, three, 2)
  assert int(then_two.opt_state.count) == 5
  for n in five.sources:
    np.testing.assert_allclose(then_two.sources[n], five.sources[n],
                               rtol=1e-6)
  # Restarting the moments changes the trajectory: they are state.
  fresh = adv.SourceState(three.sources,
                          adv.optimizer().init(three.sources))
  restarted = ascend(_concave, fresh, 2)
  assert not np.allclose(restarted.sources["a"], five.sources["a"])


def test_apply_ascent_is_one_step_of_ascend():
  state = _state()
  by_grad = jax.jit(lambda s: adv.apply_ascent(
      s, jax.grad(_concave)(s.sources), lr=0.03))(state)
  by_loss = ascend(_concave, state, 1, lr=0.03)
  for n in by_grad.sources:
    np.testing.assert_allclose(by_grad.sources[n], by_loss.sources[n],
                               rtol=1e-6)


def test_ascent_result_carries_no_gradient():
  # The loss closes over θ; the new sources are leaves for later losses.
  def new_sources(theta):
    loss = lambda r: jnp.sum(theta * r["a"])  # noqa: E731
    return jnp.sum(adv.ascend(loss, _state(), 2).sources["a"])

  grad = jax.jit(jax.grad(new_sources))(jnp.array([1.0, -2.0, 0.5, 3.0]))
  np.testing.assert_array_equal(grad, 0.0)


def test_learning_rate_warmup():
  lr = jax.jit(adv.learning_rate, static_argnums=1)
  np.testing.assert_allclose(lr(0.0), 0.0)
  np.testing.assert_allclose(lr(0.0125), 0.005, rtol=1e-6)
  np.testing.assert_allclose(lr(0.025), 0.01, rtol=1e-6)
  np.testing.assert_allclose(lr(0.7), 0.01, rtol=1e-6)
  no_warmup = adv.Settings(lr=0.2, warmup_frac=0.0)
  np.testing.assert_allclose(lr(0.0, no_warmup), 0.2, rtol=1e-6)


def test_sign_pgd_moves_each_source_to_its_bound():
  # A linear loss over a batch, sources shared across the batch: each
  # source goes to 1 where its summed weight is positive, to 0 where it is
  # negative, and stays where it is zero.
  w = jnp.array([[1.0, -2.0, 0.0, 0.5], [2.0, -1.0, 0.0, -0.4]])

  def loss(r):
    return jnp.sum(adv.expand(r, (2,))["a"] * w)

  init = {"a": jnp.array([0.5, 0.5, 0.3, 0.05])}
  out = jax.jit(functools.partial(adv.sign_pgd, loss))(init)
  np.testing.assert_allclose(out["a"], [1.0, 0.0, 0.3, 1.0], rtol=1e-6)
  # Two steps of 0.1 from 0.5: exactly 0.7 and 0.3.
  two = adv.sign_pgd(loss, init, n_steps=2, step=0.1)
  np.testing.assert_allclose(two["a"][:2], [0.7, 0.3], rtol=1e-6)
