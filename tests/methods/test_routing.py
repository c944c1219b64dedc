"""Subset routing: the distribution of its draws, and the coefficients that
turn a routing and masks into each matrix's masked path."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax.methods import routing

S = 4          # matrices
N = 48_000     # draws for the distribution checks

draw = jax.jit(routing.uniform_k_subsets, static_argnums=(1, 2))


def _tolerance(p, n):
  """Five standard deviations of a frequency of probability `p` over `n`
  draws: a seeded check that a correct sampler fails with probability
  below 1e-6 per comparison."""
  return 5 * np.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def selections():
  return np.asarray(draw(jax.random.PRNGKey(0), (N,), S))


def test_selections_are_k_subsets(selections):
  assert selections.shape == (N, S) and selections.dtype == bool
  k = selections.sum(-1)
  assert k.min() >= 1 and k.max() <= S


def test_k_is_uniform(selections):
  k = selections.sum(-1)
  freq = np.bincount(k, minlength=S + 1)[1:] / N
  np.testing.assert_allclose(freq, 1 / S, atol=_tolerance(1 / S, N))


def test_each_k_subset_is_equally_likely(selections):
  k = selections.sum(-1)
  for size in range(1, S + 1):
    rows = selections[k == size]
    subsets = list(itertools.combinations(range(S), size))
    p = 1 / len(subsets)
    for subset in subsets:
      want = np.zeros(S, bool)
      want[list(subset)] = True
      share = np.mean(np.all(rows == want, axis=-1))
      assert abs(share - p) <= _tolerance(p, len(rows)), (size, subset)


def test_draws_per_position_for_any_batch_shape():
  sel = np.asarray(draw(jax.random.PRNGKey(1), (8, 16), S))
  assert sel.shape == (8, 16, S)
  k = sel.sum(-1)
  assert k.min() >= 1 and k.max() <= S
  # Positions draw independently: not every position of an example agrees.
  assert len({tuple(r) for r in sel.reshape(-1, S)}) > 1
  one = jax.eval_shape(functools.partial(routing.uniform_k_subsets,
                                         batch_shape=(), n=S),
                       jax.random.PRNGKey(2))
  assert one.shape == (S,) and one.dtype == bool     # one example


def test_one_matrix_is_always_routed():
  assert bool(jnp.all(draw(jax.random.PRNGKey(3), (50,), 1)))
  with pytest.raises(ValueError, match="at least one"):
    routing.uniform_k_subsets(jax.random.PRNGKey(0), (2,), 0)


def test_routes_by_name(selections):
  names = ("a", "b", "c", "d")
  routes = routing.split_routes(selections, names)
  for j, name in enumerate(names):
    np.testing.assert_array_equal(routes[name], selections[:, j])
  with pytest.raises(ValueError, match="names"):
    routing.split_routes(selections, ("a", "b"))
  shapes = jax.eval_shape(functools.partial(
      routing.subset_routing, batch_shape=(5, 2), names=names),
                          jax.random.PRNGKey(4))
  assert {n: s.shape for n, s in shapes.items()} == {n: (5, 2)
                                                      for n in names}


def test_masks_from_sources():
  ci = jnp.array([[0.0, 0.5, 1.0]])
  src = jnp.array([[0.2, 0.4, 0.9, 0.7]])
  mask, delta = routing.masks_from_sources(ci, src)
  np.testing.assert_allclose(mask, [[0.2, 0.5 + 0.5 * 0.4, 1.0]], rtol=1e-6)
  np.testing.assert_allclose(delta, [0.7], rtol=1e-6)
  with pytest.raises(ValueError, match="C\\+1"):
    routing.masks_from_sources(ci, src[..., :3])


def test_routed_coefficients():
  routes = {"a": jnp.array([True, False]), "b": jnp.array([False, True])}
  masks = {"a": jnp.full((2, 3), 0.25), "b": jnp.full((2, 2), 0.5)}
  deltas = {"a": jnp.array([0.1, 0.2]), "b": jnp.array([0.3, 0.4])}
  coef, dcoef = routing.routed_coefficients(routes, masks, deltas)
  np.testing.assert_allclose(coef["a"], [[0.25] * 3, [1.0] * 3])
  np.testing.assert_allclose(coef["b"], [[1.0] * 2, [0.5] * 2])
  np.testing.assert_allclose(dcoef["a"], [0.1, 1.0])
  np.testing.assert_allclose(dcoef["b"], [1.0, 0.4])
  with pytest.raises(ValueError, match="Δ masks"):
    routing.routed_coefficients(routes, masks, {"a": deltas["a"]})


def test_unrouted_matrix_is_its_frozen_weight():
  # y = Σ_c coef_c (x·u_c) v_c + coef_Δ x Δ, with Δ = W − U V.
  rng = np.random.default_rng(0)
  d_in, d_out, C, B = 5, 4, 3, 6
  W, U, V = (rng.normal(size=s).astype(np.float32)
             for s in ((d_in, d_out), (d_in, C), (C, d_out)))
  x = rng.normal(size=(B, d_in)).astype(np.float32)
  ci = rng.uniform(size=(B, C)).astype(np.float32)
  src = rng.uniform(size=(B, C + 1)).astype(np.float32)
  routed = np.array([True, False] * 3)

  @jax.jit
  def path(routed):
    mask, delta = routing.masks_from_sources(ci, src)
    coef, dcoef = routing.routed_coefficients(
        {"w": routed}, {"w": mask}, {"w": delta})
    y = ((x @ U) * coef["w"]) @ V + (x @ (W - U @ V)) * dcoef["w"][:, None]
    return y, mask, delta

  y, mask, delta = path(routed)
  masked = ((x @ U) * mask) @ V + (x @ (W - U @ V)) * delta[:, None]
  np.testing.assert_allclose(y[routed], masked[routed], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(y[~routed], (x @ W)[~routed], rtol=1e-4,
                             atol=1e-4)


def test_drawn_once_returns_the_draw_computed_in_a_branch_of_its_own():
  key = jax.random.PRNGKey(0)

  def draw(k, p):
    x = jax.random.uniform(k, (3, 5, 4))
    return dict(x=x, b=x > p, i=(10 * x).astype(jnp.int32),
                keys=jax.random.split(jax.random.key(4), 3))   # typed keys

  want = draw(key, 0.5)
  got = jax.jit(lambda k, p: routing.drawn_once(draw, k, p))(key, 0.5)
  for name in ("x", "b", "i"):
    assert got[name].dtype == want[name].dtype
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))
  np.testing.assert_array_equal(jax.random.key_data(got["keys"]),
                                jax.random.key_data(want["keys"]))
  # Under vmap (a sweep) too, and kept as a conditional in the compiled
  # program on CPU (what stops XLA from copying the draw's hash into the
  # fusions that read it).
  keys = jax.random.split(key, 2)
  step = jax.jit(jax.vmap(lambda k: routing.drawn_once(
      lambda kk: jax.random.bernoulli(kk, 0.5, (64,)), k)[:, None]
      * jnp.ones((64, 9))))
  np.testing.assert_array_equal(np.asarray(step(keys)), np.asarray(
      jax.vmap(lambda k: jax.random.bernoulli(k, 0.5, (64,)))(keys)[
          :, :, None] * np.ones((64, 9))))
  if jax.default_backend() == "cpu":
    assert " conditional(" in step.lower(keys).compile().as_text()
