"""APD per position: each position of a sequence is an example for top-k."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_components
from test_factored import setup as factored_setup

from apd_jax import APD
from apd_jax.core import components as C
from apd_jax.core.target import Target
from apd_jax.fast import attribute as fast_attribute
from apd_jax.fast import factored


def by_position(tgt, P, xb):
  """`A²[t, c] = Σ_v (d/dε y_tv(θ* + ε P_c))²` by dense forward mode."""
  def along(c):
    f = lambda e: tgt.output(  # noqa: E731
        {n: w + e * P[n][c].reshape(w.shape)
         for n, w in tgt.weights.items()}, xb)
    return jax.jvp(f, (0.0,), (1.0,))[1]
  J = jnp.stack([along(c) for c in range(4)], axis=-1)     # [T, V, C]
  return jnp.sum(J ** 2, axis=1)


@pytest.mark.parametrize("mode,contract", [("forward", "direct"),
                                           ("reverse", "cotangent")])
def test_attributions_per_position_equal_dense_forward_mode(mode, contract):
  tgt, comps, x, model = factored_setup("transformer")
  P = C.component_weights(comps)
  for xb in x:
    got, _ = fast_attribute.attributions(
        model, tgt.weights, comps.U, comps.V, xb, mode=mode,
        contract=contract, keep=1)
    want = by_position(tgt, P, xb)
    assert got.shape == (6, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Summed over positions: the attribution of the whole output.
    whole, _ = fast_attribute.attributions(model, tgt.weights, comps.U,
                                           comps.V, xb, mode=mode,
                                           contract=contract)
    np.testing.assert_allclose(got.sum(0), whole, rtol=1e-4)


def per_token_mlp(p, x):
  """`relu(x W1) W2` on every row of `x [B, T, d]`: positions apart."""
  return jax.nn.relu(x @ p["w1"]) @ p["w2"]


def test_a_mask_per_position_masks_each_row_by_its_own_mask():
  k = jax.random.split(jax.random.PRNGKey(1), 4)
  params = {"w1": jax.random.normal(k[0], (3, 5)),
            "w2": jax.random.normal(k[1], (5, 2))}
  tgt = Target(per_token_mlp, params, ("['w1']", "['w2']"))
  x = jax.random.normal(k[2], (4, 3))                     # one example, T 4
  comps = random_components(k[3], {n: w.shape for n, w in
                                   tgt.weights.items()}, 6, 2)
  P = C.component_weights(comps)
  mask = (jax.random.uniform(k[0], (4, 6)) > 0.5).astype(jnp.float32)
  model = factored.Model(tgt.forward, tgt.weights, x)
  got, _ = model.masked(comps.U, comps.V, mask, x)
  for t in range(4):
    want = tgt.output(C.masked_weights(P, mask[t]), x[t:t + 1])[0]
    np.testing.assert_allclose(got[t], want, rtol=1e-5, atol=1e-6)


def test_the_same_mask_at_every_position_is_the_per_example_mask():
  tgt, comps, x, model = factored_setup("transformer")
  m = jnp.array([1.0, 0.0, 1.0, 1.0])
  got, _ = model.masked(comps.U, comps.V, jnp.tile(m, (6, 1)), x[0])
  want, _ = model.masked(comps.U, comps.V, m, x[0])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_product_without_a_position_axis_is_refused():
  params = {"w": jnp.ones((12, 2))}
  flat = lambda p, x: x.reshape(x.shape[0], -1) @ p["w"]  # noqa: E731
  tgt = Target(flat, params, ("['w']",))
  x = jnp.ones((4, 3))
  comps = random_components(jax.random.PRNGKey(0), {"['w']": (12, 2)}, 3, 1)
  model = factored.Model(tgt.forward, tgt.weights, x)
  with pytest.raises(ValueError, match="does not fit the input"):
    model.masked(comps.U, comps.V, jnp.ones((4, 3)), x)


def test_options_that_cannot_give_attributions_per_position_are_refused():
  for bad in (dict(attribution_mode="lazy"), dict(factored=False),
              dict(attribution_type="ablation"),
              dict(attribution_projections=4)):
    with pytest.raises(ValueError, match="per_position=True needs"):
      APD(n_components=4, topk=1.0, per_position=True, **bad)
  tgt = Target(lambda p, x: x @ p["w"], {"w": jnp.ones((3, 2))}, ("['w']",))
  with pytest.raises(ValueError, match="position axis"):
    APD(n_components=4, topk=1.0, per_position=True).check(
        tgt, lambda k, n: jax.random.normal(k, (n, 3)), 8)


def test_a_leaf_used_outside_a_product_is_refused_before_compiling():
  """A tied embedding: gathered by the tokens and multiplied by the last
  hidden state; per position it is named, with the gather, by `check`."""
  emb = jax.random.normal(jax.random.PRNGKey(0), (7, 3))

  def lm(p, tokens):                                 # [B, T] -> [B, T, V]
    return jnp.tanh(p["emb"][tokens]) @ p["emb"].T

  tgt = Target(lm, {"emb": emb}, ("['emb']",))
  method = APD(n_components=4, topk=1.0, per_position=True, recon="kl")
  with pytest.raises(ValueError, match=r"\['emb'\]: gather"):
    method.check(tgt, lambda k, n: jax.random.randint(k, (n, 5), 0, 7), 8)
