import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax.targets import gated

N, M, L = 4, 10, 2          # functions, neurons per function, layers
DELTA = 5.0 / (M - 1)       # knot spacing on [0, 5]


GRID = jnp.linspace(0.0, 5.0, 101)   # x values across the whole range
apply = jax.jit(gated.apply)


def output(params, x):
  return apply(params, x)[0]


@pytest.fixture(scope="module")
def model():
  k_fn, k_init = jax.random.split(jax.random.PRNGKey(1))
  coeffs = gated.make_functions(k_fn, N)
  return gated.init(k_init, n_functions=N, neurons_per_function=M,
                    n_layers=L, coeffs=coeffs), coeffs


def inputs(x, *on):
  """Rows `[x, s_1 … s_n]` with the bits in `on` set, one per value of x."""
  x = jnp.atleast_1d(jnp.asarray(x, jnp.float32))
  bits = jnp.zeros((x.shape[0], N)).at[:, list(on)].set(1.0)
  return jnp.concatenate([x[:, None], bits], 1)


def test_shapes_and_activation_names(model, keys):
  params, _ = model
  assert params["W_E"].shape == (N + 1, N + 2)
  assert params["W_U"].shape == (N + 2, 1)
  assert len(params["layers"]) == L
  for layer in params["layers"]:
    assert layer["W_in"].shape == (N + 2, N * M // L)
    assert layer["b_in"].shape == (N * M // L,)
    assert layer["W_out"].shape == (N * M // L, N + 2)
  x = gated.sample(keys[2], 7, n_functions=N)
  y, acts = apply(params, x)
  assert y.shape == (7, 1)
  assert sorted(acts) == sorted(
      [f"['layers'][{j}]['{w}']" for j in range(L) for w in ("W_in", "W_out")]
      + [f"post_relu_{j}" for j in range(L)])
  assert acts["['layers'][1]['W_in']"].shape == (7, N + 2)
  np.testing.assert_array_equal(acts["post_relu_0"],
                                acts["['layers'][0]['W_out']"])


def test_functions_are_drawn_from_key_by_default(keys):
  params = gated.init(keys[0], n_functions=N, neurons_per_function=M)
  explicit = gated.init(keys[0], n_functions=N, neurons_per_function=M,
                        coeffs=gated.make_functions(keys[0], N))
  jax.tree.map(np.testing.assert_array_equal, params, explicit)


def test_coefficients_in_their_ranges(keys):
  c = np.asarray(gated.make_functions(keys[0], 2000))
  for col, (lo, hi) in enumerate([(-1, 1), (0.1, 1), (-np.pi, np.pi)] * 2
                                 + [(-1, 1)]):
    assert lo <= c[:, col].min() < lo + 0.01 * (hi - lo)
    assert hi - 0.01 * (hi - lo) < c[:, col].max() <= hi


def test_functions_formula():
  coeffs = jnp.array([[2.0, 0.5, 0.1, -1.0, 0.3, 1.0, 0.25]])
  x = jnp.array([0.0, 1.5, 4.0])
  want = 2.0 * np.cos(0.5 * x + 0.1) - np.sin(0.3 * x + 1.0) + 0.25
  np.testing.assert_allclose(gated.functions(coeffs, x)[:, 0], want,
                             rtol=1e-6)


def test_one_bit_on_a_knot_gives_the_function_value(model):
  params, coeffs = model
  t = gated.knots(M)
  for i in range(N):
    y = output(params, inputs(t, i))[:, 0]
    np.testing.assert_allclose(y, gated.functions(coeffs, t)[:, i],
                               atol=2e-5)


def test_between_knots_it_is_the_linear_interpolant(model):
  params, coeffs = model
  x = GRID
  want = gated.interpolant(coeffs, x, neurons_per_function=M)
  for i in range(N):
    y = output(params, inputs(x, i))[:, 0]
    np.testing.assert_allclose(y, want[:, i], atol=2e-5)
  # Halfway between two knots: the mean of the values at those knots.
  mid = 2 * DELTA + DELTA / 2
  f = gated.functions(coeffs, jnp.array([2 * DELTA, 3 * DELTA]))[:, 0]
  np.testing.assert_allclose(output(params, inputs(mid, 0))[0, 0],
                             f.mean(), atol=2e-5)


def test_error_within_the_interpolation_bound(model):
  params, coeffs = model
  x = GRID
  bound = gated.error_bound(coeffs, neurons_per_function=M)
  for i in range(N):
    err = jnp.abs(output(params, inputs(x, i))[:, 0]
                  - gated.functions(coeffs, x)[:, i])
    assert float(err.max()) <= float(bound[i]) + 1e-5
  # The bound is δ²/8 · (|a| b² + |d| e²) with δ = 5/9.
  a, b, _, d, e, _, _ = np.asarray(coeffs[0])
  np.testing.assert_allclose(bound[0], (25 / 81) / 8 * (abs(a) * b ** 2
                                                        + abs(d) * e ** 2),
                             rtol=1e-6)


def test_all_bits_off_gives_zero(model):
  params, _ = model
  y, acts = apply(params, inputs(GRID))
  np.testing.assert_array_equal(y, 0.0)
  for j in range(L):
    np.testing.assert_array_equal(acts[f"post_relu_{j}"], 0.0)


def test_bits_add_their_functions(model):
  params, coeffs = model
  x = GRID
  y01 = output(params, inputs(x, 0, 1))
  np.testing.assert_allclose(
      y01, output(params, inputs(x, 0)) + output(params,
                                                             inputs(x, 1)),
      atol=1e-5)
  y_all = output(params, inputs(x, *range(N)))[:, 0]
  np.testing.assert_allclose(
      y_all, gated.interpolant(coeffs, x, neurons_per_function=M).sum(-1),
      atol=5e-5)


def test_each_function_has_its_own_neurons(model):
  params, _ = model
  owner = gated.neuron_functions(params)
  counts = np.bincount(np.concatenate([np.asarray(o) for o in owner]),
                       minlength=N)
  np.testing.assert_array_equal(counts, M)
  # At x = 5 every neuron of the function whose bit is on fires, no other.
  for i in range(N):
    _, acts = apply(params, inputs(5.0, i))
    for j in range(L):
      firing = np.asarray(acts[f"post_relu_{j}"][0] > 0)
      np.testing.assert_array_equal(firing, np.asarray(owner[j]) == i)


def test_layers_only_read_inputs_and_only_write_the_output(model):
  params, _ = model
  for layer in params["layers"]:
    np.testing.assert_array_equal(layer["W_in"][-1], 0.0)     # reads no y
    np.testing.assert_array_equal(layer["W_in"][0], 1.0)      # reads x
    np.testing.assert_array_equal(layer["W_out"][:, :-1], 0.0)
  np.testing.assert_array_equal(params["W_E"], np.eye(N + 1, N + 2))


def test_simple_bias_computes_the_same_function(model, keys):
  params, coeffs = model
  simple = gated.init(keys[1], n_functions=N, neurons_per_function=M,
                      n_layers=L, coeffs=coeffs, simple_bias=True)
  np.testing.assert_array_equal(simple["layers"][0]["b_in"], -10.0)
  x = gated.sample(keys[3], 500, n_functions=N, feature_probability=0.5)
  np.testing.assert_allclose(output(simple, x),
                             output(params, x), atol=2e-5)


def test_target_fn_sums_the_functions_of_the_bits_on(model):
  _, coeffs = model
  x = jnp.concatenate([inputs(1.0, 0, 2), inputs(3.0), inputs(4.5, 3)])
  f1, f3, f45 = (gated.functions(coeffs, jnp.array(v)) for v in (1.0, 3.0,
                                                                 4.5))
  want = jnp.array([[f1[0] + f1[2]], [0.0], [f45[3]]])
  np.testing.assert_allclose(gated.target_fn(x, coeffs), want, rtol=1e-6)
  assert f3.shape == (N,)


def test_sample_distribution(keys):
  x = gated.sample(keys[0], 20000, n_functions=N)
  assert x.shape == (20000, N + 1)
  bits = np.asarray(x[:, 1:])
  assert set(np.unique(bits)) == {0.0, 1.0}
  np.testing.assert_allclose(bits.mean(), 0.05, atol=0.003)
  assert 0.0 <= float(x[:, 0].min()) and float(x[:, 0].max()) <= 5.0
  np.testing.assert_allclose(float(x[:, 0].mean()), 2.5, atol=0.05)


def test_invalid_settings_raise(keys):
  with pytest.raises(ValueError, match="split over 3 layers"):
    gated.init(keys[0], n_functions=4, neurons_per_function=10, n_layers=3)
  with pytest.raises(ValueError, match="suppression"):
    gated.init(keys[0], n_functions=4, suppression=5.0)


def test_make_from_config_matches_init(keys):
  path = pathlib.Path(__file__).parents[2] / "configs" / "gated_functions.py"
  spec = importlib.util.spec_from_file_location("gated_functions", path)
  config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config)
  c = config.get_config()
  assert c.target.name == "gated"
  assert c.method.n_components == c.target.n_functions
  apply_fn, params, sample_fn = gated.make(c.target, 3)
  want = gated.init(jax.random.PRNGKey(3), n_functions=N,
                    neurons_per_function=M, n_layers=L)
  jax.tree.map(np.testing.assert_array_equal, params, want)
  x = sample_fn(keys[4], 64)
  assert x.shape == (64, N + 1)
  coeffs = gated.make_functions(jax.random.PRNGKey(3), N)
  bound = gated.error_bound(coeffs, neurons_per_function=M)
  err = jnp.abs(apply_fn(params, x) - gated.target_fn(x, coeffs))[:, 0]
  assert bool(jnp.all(err <= x[:, 1:] @ bound + 1e-5))
