"""VPD's importance minimality against hand computations: the smooth-L0
frequencies, the two terms, their gradients, γ's anneal and the debiased
moving average of the frequencies."""

import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64

from apd_jax.methods import minimality as mn

terms = jax.jit(mn.minimality_terms)


def _ci(shape, seed=0):
  # Importances as the upper-leaky sigmoid gives them: [0, 1], a few above.
  return np.random.default_rng(seed).uniform(0, 1.1, shape).astype(
      np.float32)


def _freq_np(ci, gamma):
  c = np.asarray(ci, np.float64).reshape(-1, ci.shape[-1])
  return np.mean(c ** 2 / (c ** 2 + gamma ** 2), axis=0)


def test_smooth_l0_values():
  ci = jnp.array([0.0, 0.1, 0.5, 1.0, 1.05])
  want = np.array([0.0, 0.01 / 0.26, 0.25 / 0.5, 1 / 1.25, 1.1025 / 1.3525])
  np.testing.assert_allclose(mn.smooth_l0(ci, 0.5), want, rtol=1e-6)
  # γ → 0 approaches the L0 indicator.
  np.testing.assert_allclose(mn.smooth_l0(jnp.array([0.0, 0.3]), 1e-4),
                             [0.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("shape", [(5,), (6, 5), (3, 4, 5)])
def test_frequencies_average_every_leading_axis(shape):
  ci = _ci(shape)
  got = jax.jit(mn.frequencies)(ci, 0.3)
  assert got.shape == (shape[-1],)
  np.testing.assert_allclose(got, _freq_np(ci, 0.3), rtol=1e-5)


def test_frequencies_reduce_bfloat16_in_float32():
  ci = jnp.asarray(_ci((64, 3)), jnp.bfloat16)
  assert jax.eval_shape(mn.frequencies, ci, 0.2).dtype == jnp.float32


def test_terms_are_grouped_per_matrix():
  ci = {"a": _ci((8, 3), 1), "b": _ci((8, 2, 5), 2)}   # different C
  gamma, ref = 0.2, 16.0
  got = terms(ci, gamma, ref)
  f = {n: _freq_np(v, gamma) for n, v in ci.items()}
  for n in ci:
    np.testing.assert_allclose(got.f[n], f[n], rtol=1e-5)
  np.testing.assert_allclose(got.activity, sum(v.sum() for v in f.values()),
                             rtol=1e-5)
  np.testing.assert_allclose(
      got.freq, sum(np.sum(v * np.log2(1 + ref * v)) for v in f.values()),
      rtol=1e-5)
  # Pooling two matrices' examples into one frequency per subcomponent
  # (what the grouping avoids) would give another value.
  a, b = ci["a"], ci["b"][..., :3].reshape(-1, 3)
  fp = _freq_np(np.concatenate([a, b]), gamma)
  grouped = terms({"a": a, "b": b}, gamma, ref).freq
  assert abs(np.sum(fp * np.log2(1 + ref * fp)) - float(grouped)) > 1e-2


def test_frequency_penalty_and_slope():
  f = jnp.array([0.0, 0.01, 0.5, 1.0])
  a = 100.0
  np.testing.assert_allclose(mn.frequency_penalty(f, a),
                             [0.0, 0.01 * 1.0, 0.5 * math.log2(51),
                              math.log2(101)], rtol=1e-6)
  autodiff = jax.jit(jax.vmap(jax.grad(mn.frequency_penalty),
                              in_axes=(0, None)))(f, a)
  np.testing.assert_allclose(mn.frequency_penalty_slope(f, a), autodiff,
                             rtol=1e-5)


def test_gradients_match_finite_differences():
  with x64():
    ci = {"a": jnp.asarray(_ci((4, 3), 3), jnp.float64),
          "b": jnp.asarray(_ci((4, 2), 4), jnp.float64)}
    gamma, ref = 0.3, 8.0
    flat, unravel = jax.flatten_util.ravel_pytree(ci)

    def loss(v):
      t = mn.minimality_terms(unravel(v), gamma, ref)
      return 0.7 * t.activity + 0.2 * t.freq

    eps = 1e-6
    steps = eps * jnp.eye(flat.size)

    @jax.jit
    def both(v):
      fd = (jax.vmap(loss)(v + steps) - jax.vmap(loss)(v - steps)) / (
          2 * eps)
      return jax.grad(loss)(v), fd

    grad, fd = both(flat)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-10)


def test_activity_gradient_is_the_exact_formula():
  # ∂/∂ci of mean_n ψ(ci_n) = 2 ci γ² / (ci² + γ²)² / N.
  ci, gamma = _ci((6, 4), 5), 0.25
  g = jax.jit(jax.grad(lambda v: mn.minimality_terms(
      {"w": v}, gamma, 1.0).activity))(ci)
  c = ci.astype(np.float64)
  want = 2 * c * gamma ** 2 / (c ** 2 + gamma ** 2) ** 2 / 6
  np.testing.assert_allclose(g, want, rtol=1e-5)


def test_gamma_anneal():
  gamma = jax.jit(mn.annealed_gamma)
  np.testing.assert_allclose(gamma(0.0), 1.0)
  np.testing.assert_allclose(gamma(1.0), 0.01)
  np.testing.assert_allclose(gamma(0.5), 0.505)
  np.testing.assert_allclose(gamma(-0.1), 1.0)   # clipped
  np.testing.assert_allclose(gamma(1.5), 0.01)
  np.testing.assert_allclose(mn.annealed_gamma(0.25, 2.0, 0.0), 1.5)


def test_decay_from_halflife():
  assert mn.decay_from_halflife(1.0) == 0.5
  np.testing.assert_allclose(mn.decay_from_halflife(10.0) ** 10, 0.5)
  with pytest.raises(ValueError, match="halflife"):
    mn.decay_from_halflife(0.0)


def test_ema_debiasing():
  beta = 0.9
  update = jax.jit(mn.ema_update)
  f1 = np.array([0.2, 0.0, 1.0], np.float32)
  f2 = np.array([0.4, 0.1, 0.0], np.float32)
  s1 = update(mn.ema_init({"a": 3}), {"a": f1}, beta)
  assert int(s1.count) == 1
  # The first debiased value is the first update's frequencies exactly.
  np.testing.assert_allclose(mn.ema_debiased(s1, beta)["a"], f1, rtol=1e-6)
  s2 = update(s1, {"a": f2}, beta)
  raw = 0.9 * 0.1 * f1 + 0.1 * f2
  np.testing.assert_allclose(s2.ema["a"], raw, rtol=1e-6)
  np.testing.assert_allclose(mn.ema_debiased(s2, beta)["a"],
                             raw / (1 - 0.81), rtol=1e-6)
  with pytest.raises(ValueError, match="averages"):
    mn.ema_update(s2, {"b": f2}, beta)


def test_ema_frequency_penalty_value_and_gradient():
  beta, ref, gamma = 0.8, 10.0, 0.3
  ci = {"a": _ci((5, 3), 6), "b": _ci((5, 2), 7)}
  ema = {"a": np.array([0.1, 0.5, 0.9], np.float32),
         "b": np.array([0.3, 0.0], np.float32)}
  state = mn.ema_update(mn.ema_init({"a": 3, "b": 2}), ema, beta)

  def loss(ci):
    f = mn.minimality_terms(ci, gamma, ref).f
    return mn.ema_frequency_penalty(f, state, decay=beta,
                                    reference_count=ref)

  (freq, new), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(ci)
  assert int(new.count) == 2
  f = {n: _freq_np(v, gamma) for n, v in ci.items()}
  f_hat = {n: (beta * (1 - beta) * ema[n] + (1 - beta) * f[n])
           / (1 - beta ** 2) for n in f}
  # Value: Φ at the debiased average.
  want = sum(np.sum(f_hat[n] * np.log2(1 + ref * f_hat[n])) for n in f)
  np.testing.assert_allclose(freq, want, rtol=1e-5)
  # Gradient: Φ'(f̂) ∂f/∂ci at full scale, ∂f_c/∂ci_nc = ψ'(ci_nc) / N.
  for n, v in ci.items():
    a = ref * f_hat[n]
    slope = np.log2(1 + a) + a / ((1 + a) * math.log(2))
    c = v.astype(np.float64)
    dpsi = 2 * c * gamma ** 2 / (c ** 2 + gamma ** 2) ** 2 / v.shape[0]
    np.testing.assert_allclose(grads[n], slope * dpsi, rtol=1e-4,
                               atol=1e-8)


def test_ema_at_the_first_update_is_the_batch_penalty():
  ci = _ci((7, 4), 8)
  ref, gamma, beta = 28.0, 0.1, 0.95

  def plain(v):
    return mn.minimality_terms({"a": v}, gamma, ref).freq

  def smoothed(v):
    f = {"a": mn.frequencies(v, gamma)}
    return mn.ema_frequency_penalty(f, mn.ema_init({"a": 4}), decay=beta,
                                    reference_count=ref)[0]

  @jax.jit
  def both(v):
    return (jax.value_and_grad(plain)(v), jax.value_and_grad(smoothed)(v))

  (v1, g1), (v2, g2) = both(ci)
  np.testing.assert_allclose(v2, v1, rtol=1e-5)
  np.testing.assert_allclose(g2, g1, rtol=1e-4, atol=1e-7)
