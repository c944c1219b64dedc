"""The Δ-component channel of a masked factored pass: a mask of `C + 1`
entries per product, the last on `Δ = W0 − Σ_c U_c V_c`."""

import jax
import jax.numpy as jnp
import numpy as np

from apd_jax.core.target import Target
from apd_jax.fast import factored
from apd_jax.targets import tms


def setup(c=3):
  """TMS 5-2 with an identity layer: `W` used twice (W, then Wᵀ) and
  `hidden`; C random rank-one factors per leaf."""
  key = jax.random.PRNGKey(0)
  params = tms.init(key, n_features=5, n_hidden=2, n_hidden_layers=1)
  params["hidden"] = [params["hidden"][0]
                      + 0.3 * jax.random.normal(key, (2, 2))]
  target = Target(tms.apply, params, ("['W']", "['hidden'][0]"))
  U, V = {}, {}
  for j, (n, w) in enumerate(target.weights.items()):
    ku, kv = jax.random.split(jax.random.fold_in(key, j))
    U[n] = jax.random.normal(ku, (c, w.shape[0], 1))
    V[n] = jax.random.normal(kv, (c, 1, w.shape[1]))
  x = jax.random.uniform(jax.random.fold_in(key, 9), (5,))
  model = factored.Model(target.forward, target.weights, x)
  weights = {n: factored.Factored(w, U[n], V[n], name=n)
             for n, w in target.weights.items()}
  return target, U, V, x, model, weights


def dense_pass(target, U, V, x, masks, model):
  """The target with occurrence k's weight `Σ_c m_c U_c V_c + m_Δ Δ`,
  formed densely (W's two occurrences set one at a time by hand)."""
  W = dict(target.weights)
  occ = model.occurrences

  def weight(k):
    n = occ[k].name
    m = masks[k]
    P = U[n] * V[n]                                  # [C, i, o]
    delta = W[n] - P.sum(0)
    return jnp.einsum("c,cio->io", m[:-1], P) + m[-1] * delta

  # Written out for TMS with an identity layer: relu(((x Wᵀ) H) W + b).
  w_down, h, w_up = weight(0), weight(1), weight(2)
  assert [o.name for o in occ] == ["['W']", "['hidden'][0]", "['W']"]
  assert [o.transposed for o in occ] == [True, False, False]
  return jax.nn.relu((x @ w_down.T) @ h @ w_up + target.params["b_final"])


def test_every_entry_at_one_is_the_target_exactly():
  target, _, _, x, model, weights = setup()
  ones = [jnp.ones(4)] * 3
  got = model(weights, x, coefs=ones)[0][0]
  want = target.forward(target.weights, x)[0]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_any_mask_equals_the_dense_weights():
  target, U, V, x, model, weights = setup()
  masks = [jax.random.uniform(jax.random.PRNGKey(k), (4,)) for k in range(3)]
  got = model(weights, x, coefs=masks)[0][0]
  want = dense_pass(target, U, V, x, masks, model)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Δ off: only the components (the C-entry mask's pass).
  off = [m.at[-1].set(0.0) for m in masks]
  np.testing.assert_allclose(model(weights, x, coefs=off)[0][0],
                             model(weights, x, coefs=[m[:-1] for m in masks])
                             [0][0], rtol=1e-6)


def test_gradients_through_delta_equal_the_dense_ones():
  """Δ depends on the factors: d/dU of the factored pass (which never
  forms Δ) equals that of the dense one."""
  target, U, V, x, model, _ = setup()
  masks = [jax.random.uniform(jax.random.PRNGKey(k), (4,)) for k in range(3)]

  def factored_out(U, V):
    weights = {n: factored.Factored(w, U[n], V[n], name=n)
               for n, w in target.weights.items()}
    return jnp.sum(model(weights, x, coefs=masks)[0][0] ** 2)

  def dense_out(U, V):
    return jnp.sum(dense_pass(target, U, V, x, masks, model) ** 2)

  got = jax.grad(factored_out, argnums=(0, 1))(U, V)
  want = jax.grad(dense_out, argnums=(0, 1))(U, V)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
