"""A Flax LM decomposed from its own `apply` and params tree, unchanged.

The model (`flax_lm.py`) stores its kernels as Flax does: q `[H, D, K]`,
fused kv `[2, G, D, K]`, o `[H, K, D]`, a stacked gating kernel
`[2, F, D]` and a down projection `[F, D]`. Its params are rounded to
bfloat16 values, so that the bfloat16 copy cast up by `Training`'s
default `compute_dtype` is exactly the float32 target.
"""

import functools
import math

import flax_lm as lm
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import apd_jax
from apd_jax import engine
from apd_jax.core import components as C
from apd_jax.core import losses
from apd_jax.core import selection
from apd_jax.fast import factored
from apd_jax.methods import spd_objective

B = 2
# These programs run once: compiled without LLVM's optimisations, in about
# half the time.
jit = functools.partial(jax.jit, compiler_options={
    "xla_backend_optimization_level": 0})
LAYOUT = {"q": ((1,), (lm.D, lm.H * lm.K)),
          "kv": ((2,), (lm.D, 2 * lm.G * lm.K)),
          "o": (2, (lm.H * lm.K, lm.D)),
          "gating": ((2,), (lm.D, 2 * lm.F)),
          "down": (1, (lm.F, lm.D))}


def kernel(layer, kind):
  return f"['params']['layer_{layer}']['{kind}']['kernel']"


@functools.cache
def params():
  """`(float32, bfloat16)` params of the linen LM: the same values."""
  shapes = jax.eval_shape(lm.LM().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, lm.T), jnp.int32))
  rng = np.random.default_rng(0)

  def draw(path, s):
    w = 0.3 * rng.standard_normal(s.shape)
    if "scale" in jax.tree_util.keystr(path):
      w = 1.0 + w / 3
    return np.asarray(w, jnp.bfloat16)

  bf16 = jax.tree_util.tree_map_with_path(draw, shapes)
  return (jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), bf16),
          jax.tree.map(jnp.asarray, bf16))


@functools.cache
def target(compute_dtype="float32"):
  """The target `engine.make_target` makes of the bfloat16 params."""
  return engine.make_target(lm.LM().apply, params()[1], lm.KERNELS,
                            sample_fn=lm.sample_tokens, log=False,
                            compute_dtype=compute_dtype)


def tokens():
  """Token sequences `[B, T]`, drawn on the host (nothing to compile)."""
  return jnp.asarray(np.random.default_rng(1).integers(0, lm.VOCAB,
                                                       (B, lm.T)), jnp.int32)


@functools.cache
def logits():
  """The float32 LM's logits `[B, T, VOCAB]` on `tokens()`."""
  return jit(lm.LM().apply)(params()[0], tokens())


def test_each_kernel_is_read_in_its_flax_layout():
  tgt = target()
  assert len(tgt.names) == 2 * len(LAYOUT)
  rows = dict(zip(tgt.names, tgt.row_axes, strict=True))
  for layer in range(lm.LAYERS):
    for kind, (axes, shape) in LAYOUT.items():
      name = kernel(layer, kind)
      assert (rows[name], tgt.weights[name].shape) == (axes, shape), name
  # Cast up to float32: the float32 params themselves.
  for got, want in zip(jax.tree.leaves(tgt.params),
                       jax.tree.leaves(params()[0]), strict=True):
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, want)
  leaves = selection.get_leaves(tgt.params, tgt.names)
  for n, w in tgt.as_leaves(tgt.weights).items():
    np.testing.assert_array_equal(w, leaves[n])
  # Every product is computed in factored form (traced, not compiled).
  model = factored.Model(tgt.forward, tgt.weights, tokens()[0])
  assert not model.materialised
  assert [o.name for o in model.occurrences] == [
      kernel(i, k) for i in range(lm.LAYERS) for k in LAYOUT]


def by_hand(params, weights, x):
  """The LM on one sequence `x [T]`, each decomposed product at position t
  with its matrix `weights[name][t] [i, o]` (the target's layout)."""
  p = params["params"]
  embed = p["embed"]["embedding"]

  def norm(h, scale):
    return h * jax.lax.rsqrt(jnp.mean(h * h, -1, keepdims=True) + 1e-6) * (
        scale)

  def product(h, layer, kind):
    return jnp.einsum("ti,tio->to", h, weights[kernel(layer, kind)])

  h = embed[x] * math.sqrt(lm.D)
  for i in range(lm.LAYERS):
    a = norm(h, p[f"layer_{i}"]["attn_norm"]["scale"])
    q = product(a, i, "q").reshape(lm.T, lm.H, lm.K)
    kv = product(a, i, "kv").reshape(lm.T, 2, lm.G, lm.K)
    o = lm.attend(q[None], kv[None, :, 0], kv[None, :, 1])[0]
    h = h + product(o.reshape(lm.T, lm.H * lm.K), i, "o")
    g = product(norm(h, p[f"layer_{i}"]["mlp_norm"]["scale"]), i, "gating")
    g = g.reshape(lm.T, 2, lm.F)
    h = h + product(jax.nn.gelu(g[:, 0]) * g[:, 1], i, "down")
  return norm(h, p["final_norm"]["scale"]) @ embed.T


def per_position(P, mask):
  """`{name: [T, i, o]}`: `Σ_c mask[t, c] P_c` at each position."""
  return {n: jnp.einsum("tc,cio->tio", mask, p) for n, p in P.items()}


# -- SPD -----------------------------------------------------------------------


def exact_spd(tgt):
  """SPD's rank-one factors from each matrix's SVD (`C = 16` each, its
  rank): components that sum to the target."""
  U, V = {}, {}
  for n, w in tgt.weights.items():
    u, s, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
    U[n] = jnp.asarray((u * np.sqrt(s)).T[:, :, None], jnp.float32)
    V[n] = jnp.asarray((np.sqrt(s)[:, None] * vt)[:, None], jnp.float32)
  return spd_objective.SPDParams(U=U, V=V, gates={})


@pytest.mark.parametrize("compute_dtype", ["float32", None])
def test_spd_with_every_mask_at_one_is_the_target(compute_dtype):
  """Per position, in float32 (cast up) and in the params' bfloat16."""
  tgt, x = target(compute_dtype), tokens()
  method = apd_jax.SPD(n_components=16, importance_coeff=1e-3, recon="kl")
  plan = method.plan(tgt, lm.sample_tokens, B, None)
  assert plan.leaves == tuple(kernel(i, k) for i in range(lm.LAYERS)
                              for k in LAYOUT)
  result = apd_jax.Decomposition(tgt, method, plan, exact_spd(tgt), {}, [])
  ones = {g: jnp.ones((B, lm.T, 16)) for g in result.groups}
  got, want = jit(result.apply)(x, ones), logits()
  assert got.shape == want.shape == (B, lm.T, lm.VOCAB)
  assert got.dtype == (compute_dtype or jnp.bfloat16)
  got = np.asarray(got, np.float32)
  if compute_dtype:
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  else:   # bfloat16 rounding (the target's own pass is as far off)
    assert np.abs(got - want).max() < 0.15
    assert np.abs(got - want).mean() < 0.02
  # The components, in each leaf's own layout, sum to the leaf.
  P = result.target.as_leaves(result.component_weights)
  for n, leaf in selection.get_leaves(params()[0], tgt.names).items():
    assert P[n].shape == (16, *leaf.shape)
    np.testing.assert_allclose(P[n].sum(0), leaf, atol=1e-5)


def test_spd_trains_a_few_steps_on_the_bfloat16_params():
  """`decompose`'s building blocks (`decompose` itself also evaluates)."""
  method = apd_jax.SPD(n_components=4, importance_coeff=1e-3, recon="kl",
                       gate_hidden=4, layerwise_coeff=0.0)
  training = apd_jax.Training(steps=3, batch_size=B, lr=1e-3)
  tgt = target(training.compute_dtype)
  engine.check_inputs(method, tgt, lm.sample_tokens, training)
  state = engine.init_state(method, tgt, training, sample_fn=lm.sample_tokens)
  plan = method.plan(tgt, lm.sample_tokens, B, state.components)
  step = jit(engine.make_train_step(method, plan, tgt, lm.sample_tokens,
                                    training))
  key = engine.run_keys(training.seed)[1]
  for _ in range(training.steps):
    state, metrics = step(state, key)
  assert int(state.step) == 3
  assert all(np.isfinite(v) for v in jax.tree.leaves(metrics))
  for leaf in jax.tree.leaves(state.components):
    assert leaf.dtype == jnp.float32
  # In each leaf's layout, the leaf minus the summed components gives the
  # faithfulness loss.
  result = apd_jax.Decomposition(tgt, method, plan, state.components, {}, [])
  leaves = selection.get_leaves(params()[0], tgt.names)

  @jit
  def faithfulness(comps):
    P = tgt.as_leaves(C.component_weights(comps))
    sq = sum(jnp.sum((leaves[n] - P[n].sum(0)) ** 2) for n in leaves)
    return (P, sq / sum(w.size for w in leaves.values()),
            losses.faithfulness(tgt.weights, C.summed_from_factors(comps)))

  P, got, want = faithfulness(result.components)
  assert P[kernel(0, "kv")].shape == (4, 2, lm.G, lm.D, lm.K)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # Causal importances per position, as the masks of `apply` are laid out.
  G = result.scores(tokens())
  assert set(G) == set(result.groups)
  for g in G.values():
    assert g.shape == (B, lm.T, 4)
    assert 0 <= float(g.min()) and float(g.max()) <= 1


# -- APD per position ----------------------------------------------------------


@functools.cache
def apd(mode):
  """An APD decomposition of the target with random components."""
  tgt = target()
  method = apd_jax.APD(n_components=4, topk=1.0, rank=2, per_position=True,
                       recon="kl", attribution_mode=mode)
  rng = np.random.default_rng(7)
  comps = C.Components(
      U={n: jnp.asarray(rng.standard_normal((4, w.shape[0], 2)), jnp.float32)
         for n, w in tgt.weights.items()},
      V={n: jnp.asarray(0.3 * rng.standard_normal((4, 2, w.shape[1])),
                        jnp.float32) for n, w in tgt.weights.items()})
  plan = method.plan(tgt, lm.sample_tokens, B, comps)
  return apd_jax.Decomposition(tgt, method, plan, comps, {}, [])


def dense_attributions(tgt, P, x):
  """`A²[b, t, c] = Σ_v (d/dε y_btv(θ* + ε P_c))²`, the weights formed."""
  def one(xb):
    def along(p):
      f = lambda e: tgt.output(  # noqa: E731
          {n: w + e * p[n] for n, w in tgt.weights.items()}, xb)
      return jax.jvp(f, (0.0,), (1.0,))[1]
    J = jax.vmap(along, out_axes=-1)(P)               # [T, V, C]
    return jnp.sum(J ** 2, axis=1)
  return jax.vmap(one)(x)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_apd_attributions_per_position_equal_the_dense_ones(mode):
  result, x = apd(mode), tokens()
  assert result.plan.factored
  got = jit(result.attributions)(x)
  want = jit(dense_attributions, static_argnums=0)(
      result.target, result.component_weights, x)
  assert got.shape == (B, lm.T, 4)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_apd_masked_pass_per_position_equals_the_dense_one():
  result, x = apd("forward"), tokens()
  tgt, P = result.target, result.component_weights
  mask = jnp.asarray(np.random.default_rng(3).uniform(size=(B, lm.T, 4)),
                     jnp.float32)
  got = jit(result.apply)(x, mask)

  @jit
  def dense(mask, x):
    at_target = {n: jnp.broadcast_to(w, (lm.T, *w.shape))
                 for n, w in tgt.weights.items()}
    masked = jax.vmap(lambda m, xb: by_hand(
        tgt.params, per_position(P, m), xb))(mask, x)
    return masked, jax.vmap(lambda xb: by_hand(tgt.params, at_target,
                                               xb))(x)

  want, reference = dense(mask, x)
  # The reference written out by hand is the model itself.
  np.testing.assert_allclose(reference, logits(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# -- NNX -----------------------------------------------------------------------


def test_the_nnx_lm_is_read_the_same_way():
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: lm.NNXLM(nnx.Rngs(0))))
  apply_fn = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731
  linen = params()[0]["params"]                # the same arrays
  tree = {"embed": linen["embed"], "final_norm": linen["final_norm"],
          "layers": {i: linen[f"layer_{i}"] for i in range(lm.LAYERS)}}
  tgt = engine.make_target(apply_fn, tree, lm.KERNELS,
                           sample_fn=lm.sample_tokens, log=False)
  assert tgt.row_axes == target().row_axes
  assert tgt.names[:5] == tuple(f"['layers'][0]['{k}']['kernel']"
                                for k in sorted(LAYOUT))
  model = factored.Model(tgt.forward, tgt.weights, tokens()[0])
  assert not model.materialised
  assert [o.name for o in model.occurrences] == [
      f"['layers'][{i}]['{k}']['kernel']" for i in range(lm.LAYERS)
      for k in LAYOUT]
