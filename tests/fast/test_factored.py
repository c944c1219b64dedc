"""The factored evaluator against the plain model with materialised weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import apd_and_plan
from conftest import random_components

from apd_jax import APD
from apd_jax.core import attribution
from apd_jax.core import components as C
from apd_jax.core import selection
from apd_jax.core.target import Target
from apd_jax.core.target import matrix_axes
from apd_jax.fast import attribute as fast_attribute
from apd_jax.fast import factored
from apd_jax.methods import apd_objective as objective
from apd_jax.models import transformer
from apd_jax.targets import resid_mlp
from apd_jax.targets import tms


class Linen(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.relu(nn.Dense(6)(x)))


def weight_as_lhs(params, x):
  """`(Wᵀ xᵀ)ᵀ`, plus a use of W that is not a product (materialised)."""
  return (params["w"].T @ x.T).T + jnp.sum(params["w"] ** 2)


def cases():
  key = jax.random.PRNGKey(0)
  k1, k2 = jax.random.split(key)
  p_tms = tms.init(k1, n_features=5, n_hidden=2, n_hidden_layers=1)
  p_res = resid_mlp.init(k1, n_features=6, d_resid=12, d_mlp=4, n_layers=2)
  linen = Linen()
  p_lin = linen.init(k1, jnp.ones((1, 4)))
  return {
      "tms": (Target(tms.apply, p_tms, ("['W']", "['hidden'][0]")),
              jax.random.uniform(k2, (3, 5))),
      "resid_mlp": (Target(resid_mlp.apply, p_res, selection.select_leaves(
          p_res, "W_in|W_out"), has_aux=True),
                    # inputs on which both MLP layers have active neurons
                    jax.random.uniform(jax.random.PRNGKey(2), (3, 6),
                                       minval=-1.0)),
      "linen": (Target(linen.apply, p_lin, selection.select_leaves(
          p_lin, "kernel")), jax.random.normal(k2, (3, 4))),
      "lhs": (Target(weight_as_lhs, {"w": jax.random.normal(k1, (4, 3))},
                     ("['w']",)), jax.random.normal(k2, (3, 4))),
      "transformer": transformer_case(k1, k2),
  }


def transformer_case(k1, k2):
  """Every matrix of a 1-layer transformer, the 3-D attention kernels
  included, on token sequences (the sequence axis inside the example)."""
  c = transformer.TransformerConfig(n_layers=1, d_model=8, n_heads=2,
                                    d_mlp=12, context=6, vocab=11)
  params = transformer.init(k1, c)
  apply_fn = lambda p, x: transformer.apply(p, x, c)  # noqa: E731
  names = selection.select_leaves(
      params, r"(query|key|value|out|mlp_in|mlp_out)'\]\['kernel")
  x = jax.random.randint(k2, (3, 6), 0, 11)
  rows = matrix_axes(apply_fn, params, names, x)
  return Target(apply_fn, params, names, row_axes=rows), x


def setup(name):
  tgt, x = cases()[name]
  shapes = {n: w.shape for n, w in tgt.weights.items()}
  comps = random_components(jax.random.PRNGKey(7), shapes, 4, 2)
  comps = comps.replace(U={n: 3.0 * u for n, u in comps.U.items()})
  return tgt, comps, x, factored.Model(tgt.forward, tgt.weights, x[0])


@pytest.mark.parametrize("name", ["tms", "resid_mlp", "linen", "lhs",
                                  "transformer"])
def test_masked_pass_equals_materialised_weights(name):
  tgt, comps, x, model = setup(name)
  P = C.component_weights(comps)
  mask = jax.random.uniform(jax.random.PRNGKey(3), (x.shape[0], 4))
  for m, xb in zip(mask, x, strict=True):
    want_y, want_acts = tgt.forward(C.masked_weights(P, m), xb)
    got_y, got_acts = model.masked(comps.U, comps.V, m, xb)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
    for k in want_acts:
      np.testing.assert_allclose(got_acts[k], want_acts[k], rtol=1e-5,
                                 atol=1e-5)


MODES = [("forward", "direct"), ("reverse", "direct"),
         ("reverse", "cotangent"), ("lazy", "direct")]


@pytest.mark.parametrize("name,mode,contract", [
    (n, *m) for n in ("tms", "resid_mlp", "linen", "lhs", "transformer")
    for m in MODES if (n, *m) != ("transformer", "reverse", "direct")])
def test_attributions_equal_the_dense_form(name, mode, contract):
  tgt, comps, x, model = setup(name)
  if name == "transformer" and mode == "lazy":   # matrices only: refused
    method = APD(n_components=4, topk=1.0, attribution_mode="lazy")
    with pytest.raises(ValueError, match="needs every decomposed leaf"):
      method.check(tgt, lambda k, n: jnp.zeros((n, 6), jnp.int32), 8)
    return
  P = C.component_weights(comps)
  if model.materialised:  # objective.attributions takes the dense path
    assert name == "lhs" and model.materialised == {"['w']"}
    return
  if name == "resid_mlp":  # else a dead layer's tangents go unchecked
    acts = tgt.forward(tgt.weights, x)[1]
    assert all(jnp.any(acts[f"post_relu_{j}"] > 0) for j in range(2))
  for xb in x:
    want = attribution.gradient(tgt.output, tgt.weights, P, xb)
    got, (y, _) = fast_attribute.attributions(
        model, tgt.weights, comps.U, comps.V, xb, mode=mode,
        contract=contract)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(y, tgt.output(tgt.weights, xb), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_objective_falls_back_for_non_product_uses(mode):
  tgt, comps, x, _ = setup("lhs")
  P = C.component_weights(comps)
  s = apd_and_plan(topk=1.0, attribution_mode=mode)
  got = objective.attributions(tgt, *s, comps, x)[0]
  want = jax.vmap(lambda xb: attribution.gradient(
      tgt.output, tgt.weights, P, xb))(x)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The non-product use carries attribution too.
  assert not np.allclose(want, 0.0)


def test_occurrences_of_a_leaf_used_twice():
  _, _, _, model = setup("tms")
  occ = model.occurrences
  # x Wᵀ, then h H (the hidden layer), then h W.
  assert [(o.name, o.transposed) for o in occ] == [
      ("['W']", True), ("['hidden'][0]", False), ("['W']", False)]


def test_rank_one_direct_effect_is_an_outer_product():
  """`a U_c V_c` for rank 1 is `(a·u_c) v_c`."""
  u = jnp.arange(6.0).reshape(2, 3, 1)
  v = jnp.arange(8.0).reshape(2, 1, 4)
  a = jnp.array([1.0, -1.0, 2.0])
  occ = factored.Occurrence("w", False)
  got = factored._direct(a, {"w": u}, {"w": v}, occ)  # noqa: SLF001
  want = jnp.stack([(a @ u[c, :, 0]) * v[c, 0] for c in range(2)])
  np.testing.assert_allclose(got, want)


def test_projected_attributions_are_unbiased():
  """The mean over many random projections approaches the exact value."""
  tgt, comps, x, model = setup("resid_mlp")
  xb = x[0]
  exact, _ = fast_attribute.attributions(model, tgt.weights, comps.U,
                                         comps.V, xb, mode="reverse")
  keys = jax.random.split(jax.random.PRNGKey(11), 4000)
  est = jax.vmap(lambda k: model.attributions(
      tgt.weights, comps.U, comps.V, xb, mode="reverse", projections=3,
      key=k)[0])(keys)
  # Each estimate is a sum of 3 scaled chi-square terms: its mean over
  # 4000 draws is within a few percent of the exact value.
  np.testing.assert_allclose(est.mean(0), exact, rtol=0.08)
  # One draw is not exact (the test is not vacuous).
  assert not np.allclose(est[0], exact, rtol=1e-3)


def test_attention_kernels_are_decomposed_as_matrices_without_materialising():
  tgt, x = cases()["transformer"]
  rows = dict(zip(tgt.names, tgt.row_axes, strict=True))
  assert rows["['params']['block_0']['query']['kernel']"] == 1   # [d, H, e]
  assert rows["['params']['block_0']['out']['kernel']"] == 2     # [H, e, d]
  assert rows["['params']['block_0']['mlp_in']['kernel']"] == 1
  assert tgt.weights["['params']['block_0']['out']['kernel']"].shape == (8, 8)
  assert tgt.shapes["['params']['block_0']['out']['kernel']"] == (2, 4, 8)
  model = factored.Model(tgt.forward, tgt.weights, x[0])
  assert not model.materialised and len(model.occurrences) == 6
  # The 2-D views put back give the model itself.
  np.testing.assert_allclose(tgt.batch(x, tgt.weights)[0],
                             tgt.apply_fn(tgt.params, x), rtol=1e-6)


def test_a_leaf_contracted_on_trailing_axes_is_its_matrix():
  w = jnp.ones((2, 3, 4))
  f = lambda p, x: jnp.einsum("bk,ijk->bij", x, p["w"])  # noqa: E731
  assert matrix_axes(f, {"w": w}, ("['w']",), jnp.ones((1, 4))) == ((2,),)
  with pytest.raises(ValueError, match="needs row_axes"):
    Target(f, {"w": w}, ("['w']",))
