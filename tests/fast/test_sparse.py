"""The sparse masked product against the dense one: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import apd_and_plan
from conftest import random_components

from apd_jax.core import masking
from apd_jax.core import selection
from apd_jax.core.target import Target
from apd_jax.fast import factored
from apd_jax.fast import sparse
from apd_jax.methods import apd_objective as objective
from apd_jax.targets import resid_mlp
from apd_jax.targets import tms


def problem(B=32, C=11, i=9, m=3, o=7, lead=(), k=1.4, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  a = jax.random.normal(ks[0], (B, *lead, i))
  U = jax.random.normal(ks[1], (C, i, m))
  V = jax.random.normal(ks[2], (C, m, o))
  mask = masking.batch_topk_mask(jax.random.uniform(ks[3], (B, C)), k)
  return a, U, V, mask, masking.batch_topk_count(k, B)


def dense(a, U, V, s):
  return jax.vmap(sparse.dense_masked_matmul, in_axes=(0, None, None, 0))(
      a, U, V, s)


@pytest.mark.parametrize("rows", [1, 2, 4, 64])
@pytest.mark.parametrize("lead", [(), (3,)])
def test_batched_product_equals_dense_for_any_tile_size(rows, lead):
  a, U, V, s, K = problem(lead=lead)
  got = sparse.batched_masked_matmul(a, U, V, s, K, rows_per_tile=rows)
  np.testing.assert_allclose(got, dense(a, U, V, s), rtol=1e-5, atol=1e-5)


def test_weighted_and_under_filled_masks():
  """Mask values are used as weights; fewer nonzeros than the capacity (a
  traced top-k below its bound) leave the padding slots inert."""
  a, U, V, s, K = problem()
  w = s * jax.random.uniform(jax.random.PRNGKey(5), s.shape)
  w = w.at[:10].set(0.0)
  got = sparse.batched_masked_matmul(a, U, V, w, K)
  np.testing.assert_allclose(got, dense(a, U, V, w), rtol=1e-5, atol=1e-5)
  # One component holding every kept entry: its group spans many tiles.
  one = jnp.zeros_like(s).at[:, 4].set(1.0)
  got = sparse.batched_masked_matmul(a, U, V, one, s.shape[0], rows_per_tile=4)
  np.testing.assert_allclose(got, dense(a, U, V, one), rtol=1e-5, atol=1e-5)


def test_vmapped_product_and_its_gradients_equal_dense():
  a, U, V, s, K = problem(lead=(2,))

  def loss(f):
    return lambda a, U, V: jnp.sum(jnp.sin(f(a, U, V)))

  def sp(a, U, V):
    return jax.vmap(lambda ab, sb: sparse.masked_matmul(ab, U, V, sb, K))(a, s)

  want = jax.grad(loss(lambda *p: dense(*p, s)), argnums=(0, 1, 2))(a, U, V)
  got = jax.jit(jax.grad(loss(sp), argnums=(0, 1, 2)))(a, U, V)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_outer_vmap_over_factors_is_exact():
  """A sweep vmaps over runs (factors batched) outside the batch vmap."""
  a, U, V, s, K = problem()
  Us, Vs = jnp.stack([U, 2 * U]), jnp.stack([V, -V])

  def run(U, V):
    return jax.vmap(lambda ab, sb: sparse.masked_matmul(ab, U, V, sb, K))(a, s)

  got = jax.vmap(run)(Us, Vs)
  for r in range(2):
    np.testing.assert_allclose(got[r], dense(a, Us[r], Vs[r], s), rtol=1e-5,
                               atol=1e-5)
  # And the factors batched inside the batch vmap fall back to dense.
  got = jax.vmap(lambda ab, sb: jax.vmap(
      lambda u, v: sparse.masked_matmul(ab, u, v, sb, K))(Us, Vs))(a, s)
  np.testing.assert_allclose(got[:, 1], dense(a, Us[1], Vs[1], s),
                             rtol=1e-5, atol=1e-5)


def resid_problem():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
  params = resid_mlp.init(k1, n_features=6, d_resid=12, d_mlp=4, n_layers=2)
  tgt = Target(resid_mlp.apply, params,
               selection.select_leaves(params, "W_in|W_out"), has_aux=True)
  shapes = {n: w.shape for n, w in tgt.weights.items()}
  comps = random_components(k2, shapes, 10, 2)
  x = resid_mlp.sample(k3, 64, n_features=6, feature_probability=0.3)
  return tgt, comps, x


def test_loss_and_gradients_equal_the_dense_masked_pass():
  tgt, comps, x = resid_problem()
  base = dict(topk=1.5, hidden_act_coeff=1.0, hidden_acts="post_relu")
  sparse_s = apd_and_plan(**base)
  dense_s = apd_and_plan(**base, sparse_masked=False)
  assert objective.mask_capacity(*sparse_s, 64, 10) == 96
  assert objective.mask_capacity(*dense_s, 64, 10) is None

  def grad(s):
    return jax.jit(jax.value_and_grad(
        lambda c: objective.loss_fn(c, x, tgt, *s)[0]))(comps)

  (l_sp, g_sp), (l_de, g_de) = grad(sparse_s), grad(dense_s)
  np.testing.assert_allclose(l_sp, l_de, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(g_sp), jax.tree.leaves(g_de),
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_capacity_is_left_out_where_dense_is_cheaper():
  s = apd_and_plan(topk=3.0)
  assert objective.mask_capacity(*s, 64, 10) is None        # 192 > 640 / 4
  assert objective.mask_capacity(*s, 64, 20) == 192
  per_example = apd_and_plan(topk=2, batch_topk=False)
  assert objective.mask_capacity(*per_example, 64, 40) == 128
  assert objective.mask_capacity(
      *apd_and_plan(topk=1.0, factored=False), 64, 40) is None


def test_transposed_leaf_in_factored_model():
  """TMS uses W and Wᵀ: both products take the sparse path."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2), 3)
  params = tms.init(k1, n_features=5, n_hidden=2, n_hidden_layers=0)
  tgt = Target(tms.apply, params, ("['W']",))
  comps = random_components(k2, {"['W']": (2, 5)}, 6, 1)
  x = jax.random.uniform(k3, (16, 5))
  model = factored.Model(tgt.forward, tgt.weights, x[0])
  mask = masking.batch_topk_mask(jax.random.uniform(k1, (16, 6)), 1.0)
  run = lambda cap: jax.vmap(  # noqa: E731
      lambda m, xb: model.masked(comps.U, comps.V, m, xb, cap)[0])(mask, x)
  np.testing.assert_allclose(run(16), run(None), rtol=1e-5, atol=1e-6)
