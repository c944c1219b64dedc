import jax
import jax.numpy as jnp
import numpy as np
from conftest import apd_and_plan
from conftest import random_components

from apd_jax.core import components as C
from apd_jax.core import losses
from apd_jax.core import selection
from apd_jax.core.target import Target
from apd_jax.methods import apd_objective as objective


def make(mlp, keys, n=4):
  apply_fn, params, sample = mlp
  tgt = Target(apply_fn, params, selection.select_leaves(params, r"\['w'\]"))
  shapes = {k: w.shape for k, w in tgt.weights.items()}
  return tgt, random_components(keys[0], shapes, n, 2), sample(keys[1], 8)


def test_topk_with_k_equal_C_is_the_full_decomposition(mlp, keys):
  tgt, comps, x = make(mlp, keys)
  P = C.component_weights(comps)
  full = tgt.batch(x, C.summed_weights(P))[0]
  masked, _ = objective.masked_forward(tgt, comps, jnp.ones((8, 4)), x)
  np.testing.assert_allclose(masked, full, rtol=1e-5, atol=1e-5)
  # And the top-k mask with k = C selects every component.
  s = apd_and_plan(topk=4.0)
  _, m = objective.loss_fn(comps, x, tgt, *s)
  assert float(m["l0"]) == 4.0


def test_loss_terms_match_their_definitions(mlp, keys):
  tgt, comps, x = make(mlp, keys)
  s = apd_and_plan(topk=4.0, faithfulness_coeff=2.0,
                         minimality_coeff=3.0, simplicity_coeff=0.5,
                         schatten_p=0.9)
  total, m = objective.loss_fn(comps, x, tgt, *s)
  P = C.component_weights(comps)
  faith = losses.faithfulness(tgt.weights, C.summed_weights(P))
  recon = losses.mse(tgt.batch(x)[0], tgt.batch(x, C.summed_weights(P))[0])
  simp = losses.simplicity(comps.U, comps.V, jnp.ones((8, 4)), 0.9,
                           C.n_parameters(comps))
  np.testing.assert_allclose(m["faithfulness"], faith, rtol=1e-5)
  np.testing.assert_allclose(m["minimality"], recon, rtol=1e-4)
  np.testing.assert_allclose(m["simplicity"], simp, rtol=1e-5)
  np.testing.assert_allclose(total, 2 * faith + 3 * recon + 0.5 * simp,
                             rtol=1e-4)


def test_lp_variant_differentiates_through_attributions(mlp, keys):
  tgt, comps, x = make(mlp, keys)
  s = apd_and_plan(topk=1.0, sparsity="lp", faithfulness_coeff=0.0,
                         simplicity_coeff=0.0)
  g = jax.grad(lambda c: objective.loss_fn(c, x, tgt, *s)[0])(comps)
  assert float(jnp.abs(g.U["['layer1']['w']"]).sum()) > 0


def test_hidden_activation_reconstruction(keys):
  W = jax.random.normal(keys[2], (3, 3))

  def apply_fn(params, x):
    h = jax.nn.relu(x @ params["w"])
    return h.sum(-1, keepdims=True), {"h": h}

  tgt = Target(apply_fn, {"w": W}, ("['w']",), has_aux=True)
  comps = C.init_svd(keys[0], {"['w']": W}, n_components=3,
                     rank={"['w']": 1})
  s = apd_and_plan(topk=3.0, batch_topk=False, hidden_act_coeff=1.0)
  x = jax.random.normal(keys[1], (5, 3))
  _, m = objective.loss_fn(comps, x, tgt, *s)
  assert float(m["hidden_act"]) < 1e-10      # exact components, all active
  s1 = apd_and_plan(topk=1.0, batch_topk=False, hidden_act_coeff=1.0)
  _, m1 = objective.loss_fn(comps, x, tgt, *s1)
  assert float(m1["hidden_act"]) > 1e-3
