"""Lazy forward-mode attributions against the dense explicit Jacobian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import apd_and_plan
from conftest import random_components

from apd_jax.core import attribution
from apd_jax.core import components as C
from apd_jax.core import selection
from apd_jax.core.target import Target
from apd_jax.fast import attribute as fast_attribute
from apd_jax.fast import factored
from apd_jax.fast import tangents
from apd_jax.methods import apd_objective as objective
from apd_jax.targets import resid_mlp


def odd_apply(params, x):
  """Products in both orientations, a scalar multiple, a difference, leading
  and last-axis reshapes, a concatenation and a per-example nonlinearity."""
  h = x @ params["a"]                                   # [B, 6]
  h = 2.0 * h - jnp.tanh(h)
  g = (params["b"] @ h.T).T                             # W @ a
  z = h.reshape(h.shape[0], 2, 3)                       # splits the last axis
  w = jnp.sum(z * z, axis=-1)                           # [B, 2]
  out = jnp.concatenate([g, w, -h], axis=-1) @ params["c"]
  return out.reshape(out.shape[0], 1, 3)[:, 0]          # leading axes only


def odd_problem():
  k = jax.random.split(jax.random.PRNGKey(4), 5)
  params = {"a": jax.random.normal(k[0], (4, 6)),
            "b": jax.random.normal(k[1], (6, 6)),
            "c": jax.random.normal(k[2], (14, 3))}
  tgt = Target(odd_apply, params, ("['a']", "['b']", "['c']"))
  shapes = {n: w.shape for n, w in tgt.weights.items()}
  comps = random_components(k[3], shapes, 5, 2)
  return tgt, comps, jax.random.normal(k[4], (3, 4))


def test_lazy_attributions_equal_the_explicit_jacobian():
  tgt, comps, x = odd_problem()
  model = factored.Model(tgt.forward, tgt.weights, x[0])
  assert not model.materialised
  P = C.component_weights(comps)
  for xb in x:
    want = attribution.gradient(tgt.output, tgt.weights, P, xb)
    got, (y, _) = tangents.attributions(model, tgt.weights, comps.U, comps.V,
                                        xb)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, tgt.output(tgt.weights, xb), rtol=1e-5,
                               atol=1e-6)


def test_squared_norms_equal_the_dense_tangent():
  k = jax.random.split(jax.random.PRNGKey(0), 6)
  Cn, lead, o = 4, (2,), 7
  terms = (
      (jax.random.normal(k[0], (Cn, *lead, 3)),
       jax.random.normal(k[1], (3, o))),
      (jax.random.normal(k[2], (Cn, *lead, 2)),
       jax.random.normal(k[3], (Cn, 2, o))),
      (jax.random.normal(k[4], (Cn, *lead, o)), None),
      (jax.random.normal(k[5], (Cn, *lead, o)), None),
  )
  t = tangents.Lazy(terms)
  dense = t.dense()
  assert dense.shape == (Cn, *lead, o)
  want = jnp.sum(dense.reshape(Cn, -1) ** 2, axis=1)
  np.testing.assert_allclose(tangents.squared_norms(t), want, rtol=1e-5)


def test_a_term_is_multiplied_out_when_the_basis_would_widen_it():
  coef = jnp.ones((2, 5))
  t = tangents.Lazy(((coef, None),))
  narrow = t.times(jnp.ones((5, 3)))         # r = 5 > o = 3: multiplied out
  assert narrow.terms[0][1] is None and narrow.terms[0][0].shape == (2, 3)
  wide = t.times(jnp.ones((5, 8)))           # r = 5 <= 8: kept as a basis
  assert wide.terms[0][0].shape == (2, 5) and wide.terms[0][1].shape == (5, 8)
  np.testing.assert_allclose(wide.dense(), 5.0 * jnp.ones((2, 8)))


@pytest.mark.parametrize("factored_form", [True, False])
def test_objective_accepts_lazy_in_either_form(factored_form):
  """Without the factored form 'lazy' means plain forward mode."""
  tgt, comps, x = odd_problem()
  P = C.component_weights(comps)
  s = apd_and_plan(topk=1.0, attribution_mode="lazy",
                         factored=factored_form)
  got = objective.attributions(tgt, *s, comps, x)[0]
  want = jax.vmap(lambda xb: attribution.gradient(
      tgt.output, tgt.weights, P, xb))(x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_projections_need_reverse_mode():
  tgt, comps, x = odd_problem()
  model = factored.Model(tgt.forward, tgt.weights, x[0])
  with pytest.raises(ValueError, match="reverse"):
    fast_attribute.attributions(model, tgt.weights, comps.U, comps.V, x[0],
                                mode="lazy", projections=2,
                                key=jax.random.PRNGKey(0))


def test_residual_stream_is_carried_in_its_narrow_form():
  """`h = x W_E + Σ_l ReLU(h W_in) W_out` is tracked as coefficients
  `[x, mid_1, mid_2]` (width 6 + 2 + 2 < 12) times shared bases, and the
  form's value is the stream's."""
  p = resid_mlp.init(jax.random.PRNGKey(0), n_features=6, d_resid=12,
                     d_mlp=4, n_layers=2)
  tgt = Target(resid_mlp.apply, p, selection.select_leaves(p, "W_in|W_out"),
               has_aux=True)
  comps = random_components(jax.random.PRNGKey(1), {
      n: w.shape for n, w in tgt.weights.items()}, 3, 2)
  x = jax.random.uniform(jax.random.PRNGKey(2), (6,), minval=-1.0)
  model = factored.Model(tgt.forward, tgt.weights, x)
  flat = [factored.Factored(tgt.weights[n], name=n) for n in model.names]
  args = [(w, None, False, None) for w in flat] + [(x, None, True, None)]
  outs = tangents._eval(model.jaxpr.jaxpr, model.jaxpr.consts, args,  # noqa: SLF001
                        (comps.U, comps.V))
  acts = jax.tree.unflatten(model.out_tree, outs)[1]
  value, _, _, form = acts["['layers'][1]['W_in']"]  # the stream at layer 2
  assert [c.shape for c, _ in form.terms] == [(1, 6), (1, 2)]
  np.testing.assert_allclose(form.dense()[0], value, rtol=1e-5, atol=1e-6)
  mid = acts["post_relu_0"][0]                        # per example: no form
  assert acts["post_relu_0"][3] is None and mid.shape == (2,)
