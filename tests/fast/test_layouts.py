"""Kernels of any layout, decomposed as the matrices their products contract.

A tiny attention block and gated MLP written the way Flax's `Einsum` and
`DenseGeneral` store kernels: contracted on non-leading axes, on either side
of `dot_general`, through reshapes and transposes; and the one error that
names every leaf that is not such a matrix.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_components
from flax import nnx

import apd_jax
from apd_jax import engine
from apd_jax.core import attribution
from apd_jax.core import components as C
from apd_jax.core import selection
from apd_jax.core.target import Target
from apd_jax.core.target import matrix_axes
from apd_jax.fast import attribute as fast_attribute
from apd_jax.fast import factored
from apd_jax.methods import spd_objective

T, D, H, K, F = 3, 8, 2, 4, 6   # positions, d_model, heads, d_head, d_ff
INIT = nn.initializers.normal(0.3)


class Block(nn.Module):
  """Attention with one shared key/value head, then a gated MLP."""

  @nn.compact
  def __call__(self, x):                       # [B, T, D]
    q = nn.Einsum((H, D, K), "btd,hdk->bthk", use_bias=False, name="q",
                  kernel_init=INIT)(x)         # contracted on axis 1
    kv = nn.Einsum((2, 1, D, K), "btd,shdk->sbthk", use_bias=False,
                   name="kv", kernel_init=INIT)(x)   # axis 2, kernel as lhs
    k, v = jnp.repeat(kv[0], H, axis=2), jnp.repeat(kv[1], H, axis=2)
    p = jax.nn.softmax(jnp.einsum("bthk,bshk->bhts", q, k), axis=-1)
    o = jnp.einsum("bhts,bshk->btkh", p, v)
    w_o = self.param("o", INIT, (H, K, D))     # contracted on (1, 0)
    x = x + jax.lax.dot_general(o, w_o, (((2, 3), (1, 0)), ((), ())))
    g = nn.Einsum((2, F, D), "btd,cfd->cbtf", use_bias=False, name="gate",
                  kernel_init=INIT)(x)         # contracted on axis 2
    h = nn.gelu(g[0]) * g[1]
    w_down = self.param("down", INIT, (F, D))  # a matrix as the lhs
    x = x + jnp.moveaxis(jax.lax.dot_general(
        w_down, h, (((0,), (2,)), ((), ()))), 0, -1)
    w_r = self.param("r", INIT, (K, H, D))     # transposed and reshaped
    return x + x @ jnp.transpose(w_r, (2, 1, 0)).reshape(D, H * K)


LAYOUTS = {"['params']['q']['kernel']": ((1,), (D, H * K)),
           "['params']['kv']['kernel']": ((2,), (D, 2 * K)),
           "['params']['o']": (2, (H * K, D)),
           "['params']['gate']['kernel']": ((2,), (D, 2 * F)),
           "['params']['down']": (1, (F, D)),
           "['params']['r']": ((2,), (D, K * H))}


def normal_like(tree, seed=0):
  """Arrays of `tree`'s shapes drawn on the host (nothing to compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(
      0.3 * rng.standard_normal(a.shape), jnp.float32), tree)


@functools.cache
def block_target():
  block = Block()
  x = normal_like(jax.ShapeDtypeStruct((2, T, D), jnp.float32), 1)
  params = normal_like(jax.eval_shape(block.init, jax.random.PRNGKey(0), x))
  names = selection.select_leaves(params, "kernel|'o'|down|'r'")
  rows = matrix_axes(block.apply, params, names, x)
  return Target(block.apply, params, names, row_axes=rows), x


def with_components(tgt, x, n_components=3, rank=2):
  shapes = {n: w.shape for n, w in tgt.weights.items()}
  comps = random_components(jax.random.PRNGKey(7), shapes, n_components,
                            rank)
  return comps, factored.Model(tgt.forward, tgt.weights, x[0])


def assert_one_mask_pass_is_dense(tgt, comps, model, xb):
  """The factored pass with mask (1, 0.5, 0) equals the dense one."""
  P = C.component_weights(comps)
  m = jnp.array([1.0, 0.5, 0.0])
  got, want = jax.jit(lambda xb: (
      model.masked(comps.U, comps.V, m, xb)[0],
      tgt.forward(C.masked_weights(P, m), xb)[0]))(xb)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@functools.cache
def block_model():
  """`(target, x, components, factored model)` of the block."""
  tgt, x = block_target()
  return (tgt, x, *with_components(tgt, x))


def test_each_kernel_is_the_matrix_its_products_contract():
  tgt, x = block_target()
  rows = dict(zip(tgt.names, tgt.row_axes, strict=True))
  assert {n: (rows[n], tgt.weights[n].shape) for n in tgt.names} == LAYOUTS
  # The matrices laid back out are the leaves, and give the model itself.
  leaves = selection.get_leaves(tgt.params, tgt.names)
  laid_out, y, want = jax.jit(lambda x: (
      tgt.as_leaves(tgt.weights), tgt.batch(x, tgt.weights)[0],
      tgt.apply_fn(tgt.params, x)))(x)
  for n, w in laid_out.items():
    np.testing.assert_array_equal(w, leaves[n])
  np.testing.assert_allclose(y, want, rtol=1e-6)
  # Every use is a factored product: none is materialised.
  model = block_model()[3]
  assert not model.materialised
  assert [(o.name, o.transposed) for o in model.occurrences] == [
      (n, False) for n in ("['params']['q']['kernel']",
                           "['params']['kv']['kernel']", "['params']['o']",
                           "['params']['gate']['kernel']",
                           "['params']['down']", "['params']['r']")]


def test_masked_pass_equals_the_dense_weights():
  tgt, x, comps, model = block_model()
  P = C.component_weights(comps)
  mask = jax.random.uniform(jax.random.PRNGKey(3), (x.shape[0], 3))

  @jax.jit
  def passes(mask):
    dense = jax.vmap(lambda m, xb: tgt.forward(C.masked_weights(P, m),
                                               xb)[0])(mask, x)
    fast = jax.vmap(lambda m, xb: model.masked(comps.U, comps.V, m,
                                               xb)[0])(mask, x)
    # A mask per position, the same at every one, gives the same pass.
    per_position = jax.vmap(lambda m, xb: model.masked(
        comps.U, comps.V, jnp.tile(m, (T, 1)), xb)[0])(mask, x)
    return dense, fast, per_position

  dense, fast, per_position = passes(mask)
  np.testing.assert_allclose(fast, dense, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(per_position, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,contract", [("forward", "direct"),
                                           ("reverse", "cotangent")])
def test_attributions_equal_the_dense_form(mode, contract):
  tgt, x, comps, model = block_model()
  P = C.component_weights(comps)

  @jax.jit
  def both(xb):
    want = attribution.gradient(tgt.output, tgt.weights, P, xb)
    got, (y, _) = fast_attribute.attributions(
        model, tgt.weights, comps.U, comps.V, xb, mode=mode,
        contract=contract)
    return want, got, y

  want, got, y = both(x[0])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(y, tgt.output(tgt.weights, x[0]), rtol=1e-5)


def exact_factors(tgt):
  """Two components per leaf that sum to it: `U_0 = I`,
  `V_0 = W − U_1 V_1`, the second random."""
  U, V = {}, {}
  for n, w in tgt.weights.items():
    i, o = w.shape
    u1, v1 = normal_like((jax.ShapeDtypeStruct((i, i), jnp.float32),
                          jax.ShapeDtypeStruct((i, o), jnp.float32)), 5)
    U[n] = jnp.stack([jnp.eye(i), u1])
    V[n] = jnp.stack([w - u1 @ v1, v1])
  return C.Components(U=U, V=V)


def test_summed_components_are_the_leaves_in_their_own_layout():
  tgt, _ = block_target()

  @jax.jit
  def laid_out(comps):
    P = C.component_weights(comps)
    return P, tgt.as_leaves(P), tgt.as_leaves(C.summed_weights(P))

  P, per_component, summed = laid_out(exact_factors(tgt))
  for n, leaf in selection.get_leaves(tgt.params, tgt.names).items():
    assert per_component[n].shape == (2, *leaf.shape)
    np.testing.assert_allclose(per_component[n].sum(0), leaf, atol=1e-5)
    np.testing.assert_allclose(summed[n], leaf, atol=1e-5)
    np.testing.assert_array_equal(per_component[n][1],
                                  tgt.as_leaves({n: P[n][1]})[n])


def test_spd_masked_passes_with_all_ones_masks_give_the_target():
  tgt, x = block_target()
  plan = spd_objective.make_plan(tgt, x[0])
  assert plan.labels == tuple(LAYOUTS) and not any(plan.transposed)
  comps = exact_factors(tgt)
  params = spd_objective.SPDParams(U=comps.U, V=comps.V, gates={})
  inputs = jax.eval_shape(lambda x: spd_objective.target_pass(tgt, x), x)[1]
  ones = [jnp.ones(a.shape[:-1] + (2,)) for a in inputs]
  y = jax.jit(lambda x: spd_objective.masked_forward(
      tgt, params, plan, ones, x)[0])(x)
  np.testing.assert_allclose(y, tgt.batch(x)[0], rtol=1e-4, atol=1e-4)


class NNXBlock(nnx.Module):
  """Attention written with `nnx.Einsum`: q `[H, D, K]`, out `[H, K, D]`."""

  def __init__(self, rngs):
    self.q = nnx.Einsum("td,hdk->thk", (H, D, K), rngs=rngs)
    self.out = nnx.Einsum("thk,hkd->td", (H, K, D), rngs=rngs)

  def __call__(self, x):                      # [B, T, D]
    return jax.vmap(lambda xt: self.out(jnp.tanh(self.q(xt))))(x)


def test_nnx_einsum_kernels():
  graphdef, state = nnx.split(NNXBlock(nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)
  apply_fn = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731
  x = normal_like(jax.ShapeDtypeStruct((2, T, D), jnp.float32), 1)
  names = selection.select_leaves(params, "kernel")
  tgt = Target(apply_fn, params, names,
               row_axes=matrix_axes(apply_fn, params, names, x))
  assert tgt.row_axes == (2, (1,))            # out, then q
  comps, model = with_components(tgt, x)
  assert not model.materialised
  assert_one_mask_pass_is_dense(tgt, comps, model, x[0])


def refused(p, x):
  """Four leaves no matrix stands for, one that is fine."""
  per_head = jnp.einsum("bhd,hdk->bhk", x.reshape(-1, H, K),
                        p["per_head"])               # batched over heads
  two_ways = (jnp.einsum("bd,dhk->bhk", x, p["two_ways"]).sum()
              + jnp.einsum("bh,dhk->bdk", x[:, :H], p["two_ways"]).sum())
  sliced = x @ p["sliced"][0]
  partly = x @ p["partly"].reshape(D, -1)[:, :D]
  fine = jnp.einsum("bd,hdk->bhk", x, p["fine"])
  return (per_head.sum() + two_ways + sliced.sum() + partly.sum()
          + fine.sum()) * jnp.ones((x.shape[0], 1))


def test_one_error_names_every_leaf_that_is_not_a_matrix():
  params = {"per_head": jnp.ones((H, K, 3)), "two_ways": jnp.ones((D, H, K)),
            "sliced": jnp.ones((2, D, D)), "partly": jnp.ones((D, 2, D)),
            "fine": jnp.ones((H, D, K))}
  sample = lambda key, n: jax.random.normal(key, (n, D))  # noqa: E731
  with pytest.raises(ValueError) as e:
    engine.make_target(refused, params, ".", sample_fn=sample, log=False)
  message = str(e.value)
  assert message.startswith("4 leaves cannot be decomposed as matrices: ")
  assert ("['per_head'] (2, 4, 3): dot_general contracting its axes (1,) "
          "and batching over its axes (0,), which uses it as a "
          "block-diagonal matrix") in message
  assert ("['two_ways'] (8, 2, 4): its products contract different axes: "
          "dot_general contracting its axes (0,); dot_general contracting "
          "its axes (1,)") in message
  assert "['sliced'] (2, 8, 8): used in no product (it meets slice)" in (
      message)
  # Reshaped to [8, 16] and sliced: the slice is what it meets.
  assert "['partly'] (8, 2, 8): used in no product (it meets slice)" in (
      message)
  assert "['fine']" not in message


def test_a_product_over_part_of_an_axis_is_named():
  """`[2, 6, 4]` seen as `[4, 3, 4]`: axis 0 is axis 0 and half of axis 1."""
  f = lambda p, x: jnp.einsum(  # noqa: E731
      "bi,ijk->bjk", x, p["w"].reshape(4, 3, 4))
  with pytest.raises(ValueError, match=r"\['w'\] \(2, 6, 4\): dot_general "
                     r"contracting its axes \(0, 1\) contracts its axes "
                     r"\(1,\) only in part"):
    matrix_axes(f, {"w": jnp.ones((2, 6, 4))}, ("['w']",), jnp.ones((1, 4)))


def test_row_axes_survive_json():
  tgt, _ = block_target()
  again = Target(tgt.apply_fn, tgt.params, tgt.names, row_axes=[
      list(r) if isinstance(r, tuple) else r for r in tgt.row_axes])
  assert again.row_axes == tgt.row_axes
  with pytest.raises(ValueError, match="needs row_axes"):
    Target(tgt.apply_fn, tgt.params, tgt.names,
           row_axes=(0,) * len(tgt.names))


def test_view_follows_reshapes_and_transposes():
  v = selection.View.of((2, 3, 4)).transpose((2, 0, 1)).reshape((4, 6))
  src = jnp.arange(24.0).reshape(2, 3, 4)
  np.testing.assert_array_equal(v.apply(src),
                                jnp.transpose(src, (2, 0, 1)).reshape(4, 6))
  assert selection.View.of((6, 4)).reshape((4, 6)) is None


@pytest.mark.parametrize("method", [
    apd_jax.APD(n_components=3, topk=1.0, rank=2, per_position=True,
                attribution_mode="forward"),
    apd_jax.SPD(n_components=3, importance_coeff=1e-3)])
def test_a_training_step_of_either_method_traces(method):
  """Checked and traced (not compiled): APD per position, SPD."""
  block = Block()
  params = block_target()[0].params
  sample = lambda key, n: jax.random.normal(key, (n, T, D))  # noqa: E731
  training = apd_jax.Training(steps=1, batch_size=2, progress=False)
  tgt = engine.make_target(block.apply, params, "kernel|'o'|down|'r'",
                           sample_fn=sample, log=False)
  engine.check_inputs(method, tgt, sample, training)
  state = engine.init_state(method, tgt, training, sample_fn=sample)
  plan = method.plan(tgt, sample, training.batch_size, state.components)
  step = engine.make_train_step(method, plan, tgt, sample, training)
  new, metrics = jax.eval_shape(step, state, jax.random.PRNGKey(0))
  assert jax.tree.structure(new) == jax.tree.structure(state)
  assert metrics["faithfulness"].shape == ()


def test_a_kernel_used_with_its_transpose():
  """`[h, k, d]` contracted on d, then on (h, k): the matrix and its
  transpose, two occurrences of one leaf."""
  def f(p, x):                                  # [B, D] -> [B, D]
    return jnp.einsum("bhk,hkd->bd", jnp.tanh(
        jnp.einsum("bd,hkd->bhk", x, p["w"])), p["w"])

  params = normal_like({"w": jax.ShapeDtypeStruct((H, K, D), jnp.float32)})
  x = normal_like(jax.ShapeDtypeStruct((2, D), jnp.float32), 1)
  tgt = Target(f, params, ("['w']",),
               row_axes=matrix_axes(f, params, ("['w']",), x))
  assert tgt.row_axes == ((2,),) and tgt.weights["['w']"].shape == (D, H * K)
  comps, model = with_components(tgt, x)
  assert [(o.name, o.transposed) for o in model.occurrences] == [
      ("['w']", False), ("['w']", True)]
  assert_one_mask_pass_is_dense(tgt, comps, model, x[0])
