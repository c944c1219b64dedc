"""Attributions against explicit per-output computations."""

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
from apd_jax.methods import apd_objective as objective


def setup(mlp, keys):
  apply_fn, params, sample = mlp
  names = selection.select_leaves(params, r"\['w'\]")
  tgt = Target(apply_fn, params, names)
  shapes = {n: w.shape for n, w in tgt.weights.items()}
  comps = random_components(keys[0], shapes, 4, 2)
  x = sample(keys[1], 5)
  return tgt, comps, x


def explicit(tgt, base, P, x):
  """Σ_o (Σ_l ⟨∂f_o/∂W_l, P[c,l]⟩)², one output at a time."""
  n_out = tgt.output(base, x).size
  rows = []
  for o in range(n_out):
    g = jax.grad(lambda w, o=o: tgt.output(w, x).reshape(-1)[o])(dict(base))
    rows.append(sum(jnp.einsum("io,cio->c", g[n], P[n]) for n in P))
  return jnp.sum(jnp.stack(rows) ** 2, axis=0)


@pytest.mark.parametrize("mode,contract", [
    ("forward", "direct"), ("reverse", "direct"), ("reverse", "cotangent"),
    ("reverse", ("cotangent", "direct"))])
@pytest.mark.parametrize("point", ["target", "components"])
def test_gradient_attribution_equals_explicit(mlp, keys, mode, contract,
                                              point):
  tgt, comps, x = setup(mlp, keys)
  P = C.component_weights(comps)
  base = tgt.weights if point == "target" else C.summed_weights(P)
  s = apd_and_plan(topk=1.0, attribution_point=point,
                         attribution_mode=mode, attribution_contract=contract)
  got, y, _ = objective.attributions(tgt, *s, comps, x)
  want = jnp.stack([explicit(tgt, base, P, xb) for xb in x])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(y, tgt.batch(x)[0], rtol=1e-5, atol=1e-6)
  # The component-weight form gives the same numbers.
  dense = jax.vmap(lambda xb: attribution.gradient(
      tgt.output, base, P, xb, mode=mode))(x)
  np.testing.assert_allclose(dense, want, rtol=1e-4, atol=1e-5)


def test_ablation_attribution_hand_computation(mlp, keys):
  tgt, comps, x = setup(mlp, keys)
  P = C.component_weights(comps)
  got = jax.vmap(lambda xb: attribution.ablation(tgt.output, P, xb))(x)
  full = tgt.batch(x, C.summed_weights(P))[0]
  for c in range(4):
    mask = jnp.ones(4).at[c].set(0.0)
    without = tgt.batch(x, C.masked_weights(P, mask))[0]
    np.testing.assert_allclose(got[:, c], jnp.mean((full - without) ** 2, -1),
                               rtol=1e-4, atol=1e-6)


def test_activation_attribution_hand_computation(keys):
  P = {"w": jax.random.normal(keys[0], (3, 4, 2))}
  a = jax.random.normal(keys[1], (4,))
  got = attribution.activation({"w": a}, P)
  want = [float(jnp.sum((a @ P["w"][c]) ** 2)) for c in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def deep_mlp(params, x):
  for w in params["layers"][:-1]:
    x = jax.nn.relu(x @ w)
  return x @ params["layers"][-1]


@pytest.mark.parametrize("n_components,d_out,want", [
    (2, 64, "forward"),     # 2 tangents vs 64 cotangents
    (64, 1, "reverse"),     # 64 tangents through 3 layers vs 1 cotangent
])
def test_choose_mode_picks_the_cheaper(keys, n_components, d_out, want):
  dims = [16, 64, 64, 64, d_out]
  params = {"layers": [0.1 * jax.random.normal(k, (a, b)) for k, a, b in
                       zip(keys, dims[:-1], dims[1:], strict=False)]}
  tgt = Target(deep_mlp, params, ("['layers'][0]",))
  comps = random_components(keys[5], {"['layers'][0]": (16, 64)},
                            n_components, 1)
  x = jax.ShapeDtypeStruct((32, 16), jnp.float32)

  def batched(mode):
    s = apd_and_plan(topk=1.0, attribution_mode=mode)
    return lambda c, xb: objective.attributions(tgt, *s, c, xb)[0]

  assert attribution.choose_mode(batched, comps, x) == want
