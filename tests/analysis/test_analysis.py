"""Analyses on hand-built decompositions with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import apd_and_plan

from apd_jax.analysis import features as analysis
from apd_jax.core import components as C
from apd_jax.core.target import Target
from apd_jax.engine import api
from apd_jax.targets import gated
from apd_jax.targets import resid_mlp

NAMES = ("['layers'][0]['W_in']", "['layers'][0]['W_out']")


def monosemantic(n=4, d=6):
  """Orthonormal embedding; neuron i reads and writes feature i only."""
  q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (d, n)))
  W_E = q.T                                             # [n, d], orthonormal
  gains = jnp.arange(1.0, n + 1.0)
  layer = {"W_in": W_E.T * gains[None], "W_out": W_E * 0.5}
  return {"W_E": W_E, "layers": [layer]}


def ideal(params):
  """One rank-1 component per feature, exactly that feature's weights."""
  W_E, layer = params["W_E"], params["layers"][0]
  n = W_E.shape[0]
  U = {NAMES[0]: W_E[:, :, None],                           # [n, d, 1]
       NAMES[1]: jnp.eye(n)[:, :, None]}                    # [n, n, 1]
  V = {NAMES[0]: (W_E @ layer["W_in"])[:, None, :],        # [n, 1, n]
       NAMES[1]: layer["W_out"][:, None, :]}               # [n, 1, d]
  comps = C.Components(U=U, V=V)
  tgt = Target(resid_mlp.apply, params, NAMES, has_aux=True)
  return api.Decomposition(tgt, *apd_and_plan(topk=1.0), comps, {}, [])


def test_contributions_by_hand():
  params = monosemantic()
  kappa = analysis.contributions(
      params["W_E"], [(params["layers"][0]["W_in"],
                       params["layers"][0]["W_out"])])
  # Feature i drives neuron i with gain i+1, which writes 0.5 back.
  np.testing.assert_allclose(kappa, jnp.diag(0.5 * jnp.arange(1.0, 5.0)),
                             atol=1e-6)


def test_ideal_decomposition_recovers_every_feature():
  params = monosemantic()
  result = ideal(params)
  # The components sum to the target exactly.
  summed = C.summed_from_factors(result.components)
  for n in NAMES:
    np.testing.assert_allclose(summed[n], result.target.weights[n],
                               atol=1e-6)
  best = analysis.best_components(result, 4)
  np.testing.assert_array_equal(best, np.arange(4))
  kappa = analysis.contributions(params["W_E"], [(
      params["layers"][0]["W_in"], params["layers"][0]["W_out"])])
  comp = analysis.component_contributions(params["W_E"],
                                          result.component_weights, 1)
  rec = analysis.recovery(kappa, comp, best)
  assert rec["n_recovered"] == 4 and rec["n_distinct_best"] == 4
  np.testing.assert_allclose(rec["cosine"], 1.0, rtol=1e-5)
  # A wrong assignment recovers nothing.
  assert analysis.recovery(kappa, comp, (best + 1) % 4)["n_recovered"] == 0


def test_scrubbing_on_the_ideal_decomposition():
  params = monosemantic()
  result = ideal(params)
  x = jnp.array([[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.8, -0.3]])
  losses = analysis.scrubbing(result, x, resid_mlp.labels(x), jnp.arange(4),
                              jax.random.PRNGKey(0), n_neurons=2)
  y = result.target.batch(x)[0]
  want = jnp.mean((y - resid_mlp.labels(x)) ** 2, axis=1)
  # Sparing the active features' components reproduces the target exactly.
  np.testing.assert_allclose(losses["scrubbed"], want, atol=1e-6)
  # Ablating them removes the MLP's output: y = x.
  np.testing.assert_allclose(
      losses["anti_scrubbed"],
      jnp.mean((x - resid_mlp.labels(x)) ** 2, axis=1), atol=1e-6)
  # The monosemantic baseline computes features 0 and 1 only.
  np.testing.assert_allclose(losses["monosemantic"],
                             [0.0, (0.8 ** 2) / 4], atol=1e-7)


def test_scrub_masks_switch_off_half():
  active = jnp.array([[True, False, False], [False, True, True]])
  best = jnp.array([0, 2, 3])
  for key in jax.random.split(jax.random.PRNGKey(0), 5):
    scrubbed, anti = analysis.scrub_masks(key, active, best, 6)
    np.testing.assert_array_equal(scrubbed.sum(1), [3, 3])
    np.testing.assert_array_equal(anti.sum(1), [3, 3])
    assert scrubbed[0, 0] == 1 and scrubbed[1, 2] == 1 and scrubbed[1, 3] == 1
    assert anti[0, 0] == 0 and anti[1, 2] == 0 and anti[1, 3] == 0


def test_function_recovery_of_the_ideal_gated_decomposition():
  params = gated.init(jax.random.PRNGKey(0), n_functions=3,
                      neurons_per_function=4, n_layers=2)
  fns = gated.neuron_functions(params)
  weights = {n: params["layers"][j][k] for j in range(2)
             for k, n in zip(("W_in", "W_out"),
                             analysis.layer_names(2)[j], strict=True)}
  P = {n: jnp.stack([analysis.function_weights(weights, fns, f)[n]
                     for f in range(3)]) for n in weights}
  scores = analysis.function_recovery(weights, P, fns)
  np.testing.assert_allclose(jnp.diag(scores), 1.0, rtol=1e-5)
  # Distinct functions own disjoint neurons: their parts are orthogonal.
  np.testing.assert_allclose(scores - jnp.diag(jnp.diag(scores)), 0.0,
                             atol=1e-6)
  norms = analysis.neuron_norms(P, 2)
  owner = np.concatenate([np.asarray(f) for f in fns])
  assert norms.shape == (3, 12)
  for f in range(3):
    assert np.all(np.asarray(norms[f])[owner != f] == 0)
    assert np.all(np.asarray(norms[f])[owner == f] > 0)
