"""Every loss against a value computed by hand."""

import math

import jax
import jax.numpy as jnp
from conftest import x64
from jax.test_util import check_grads

from apd_jax.core import losses


def test_faithfulness_hand_value():
  target = {"a": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([[5.]])}
  summed = {"a": jnp.ones((2, 2)), "b": jnp.array([[3.0]])}
  # (0 + 1 + 4 + 9 + 4) / 5 parameters
  assert math.isclose(float(losses.faithfulness(target, summed)), 18 / 5,
                      rel_tol=1e-6)
  assert float(losses.faithfulness(target, target)) == 0.0


def test_mse_hand_value():
  y = jnp.array([[1.0, 2.0], [0.0, -1.0]])
  assert math.isclose(float(losses.mse(y, jnp.zeros_like(y))), 6 / 4,
                      rel_tol=1e-6)


def test_kl_hand_value():
  p_logits = jnp.zeros((1, 2))                      # p = (1/2, 1/2)
  q_logits = jnp.log(jnp.array([[1.0, 3.0]]))       # q = (1/4, 3/4)
  want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
  assert math.isclose(float(losses.kl(p_logits, q_logits)), want,
                      rel_tol=1e-5)
  assert abs(float(losses.kl(q_logits, q_logits))) < 1e-7


def test_hidden_activations_hand_value():
  target = {"h1": jnp.zeros((2, 2)), "h2": jnp.zeros((2, 1))}
  acts = {"h1": jnp.array([[1.0, 0.0], [0.0, 0.0]]),
          "h2": jnp.array([[2.0], [0.0]])}
  # (1 + 4) squared error / (3 dims * 2 examples)
  assert math.isclose(float(losses.hidden_activations(target, acts)), 5 / 6,
                      rel_tol=1e-6)


def test_schatten_rank1_is_singular_value_to_p():
  u = jnp.array([3.0, 4.0])         # |u| = 5
  v = jnp.array([2.0, 0.0, 0.0])    # |v| = 2
  U = {"w": u[None, :, None]}
  V = {"w": v[None, None, :]}
  sigma = float(jnp.linalg.svd(jnp.outer(u, v), compute_uv=False)[0])
  assert math.isclose(sigma, 10.0, rel_tol=1e-6)
  for p in (1.0, 0.9, 0.5):
    got = float(losses.schatten_per_component(U, V, p)[0])
    assert math.isclose(got, sigma ** p, rel_tol=1e-6)


def test_schatten_from_factors_hand_value():
  U = {"w": jnp.array([[[1.0, 0.0], [0.0, 2.0]]])}   # column norms 1, 2
  V = {"w": jnp.array([[[3.0, 0.0], [0.0, 1.0]]])}   # row norms 3, 1
  # p = 1: 1*3 + 2*1
  assert math.isclose(float(losses.schatten_per_component(U, V, 1.0)[0]), 5.0,
                      rel_tol=1e-6)


def test_simplicity_hand_value():
  U = {"w": jnp.array([[[1.0]], [[2.0]]])}   # C = 2, i = 1, m = 1
  V = {"w": jnp.array([[[3.0]], [[1.0]]])}   # S = (3, 2) at p = 1
  mask = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  # (3 + 3 + 2) / (N = 1 param * B = 2)
  assert math.isclose(float(losses.simplicity(U, V, mask, 1.0, 1)), 4.0,
                      rel_tol=1e-6)


def test_lp_sparsity_hand_value():
  attr = jnp.array([[4.0, 16.0], [0.0, 9.0]])   # squared attributions
  # d_out = 4, p = 1: mean over batch of sum_c sqrt(a / 4)
  want = ((1 + 2) + (0 + 1.5)) / 2
  assert math.isclose(float(losses.lp_sparsity(attr, 4, 1.0)), want,
                      rel_tol=1e-6)


def test_loss_gradients_match_finite_differences():
  with x64():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    t = {"a": jax.random.normal(k[0], (3, 2))}
    check_grads(lambda s: losses.faithfulness(t, {"a": s}),
                (jax.random.normal(k[1], (3, 2)),), order=2)
    logits = jax.random.normal(k[2], (4, 5))
    check_grads(lambda q: losses.kl(logits, q),
                (jax.random.normal(k[3], (4, 5)),), order=2)
    mask = jnp.array([[1.0, 0.0, 1.0]])
    check_grads(
        lambda u, v: losses.simplicity({"w": u}, {"w": v}, mask, 0.9, 6),
        (jax.random.normal(k[0], (3, 3, 2)),
         jax.random.normal(k[1], (3, 2, 2))), order=1, modes=["rev"])
