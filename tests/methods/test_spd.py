"""SPD's pieces against hand computations: hard sigmoids, masks, losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax import SPD
from apd_jax.core import selection
from apd_jax.core.target import Target
from apd_jax.methods import spd_objective as obj
from apd_jax.targets import tms

L1, L2 = "['layer1']['w']", "['layer2']['w']"


def grads(f, z, sign):
  """d(sign · Σ f(z)) / dz: the incoming gradient has the sign `sign`."""
  return jax.grad(lambda v: sign * jnp.sum(f(v)))(z)


def test_lower_leaky_hard_sigmoid_values_and_gradients():
  z = jnp.array([-0.5, 0.0, 0.5, 1.0, 1.5])
  np.testing.assert_allclose(obj.lower_leaky_hard_sigmoid(z),
                             [0.0, 0.0, 0.5, 1.0, 1.0])
  # Incoming gradient +1 (descent would lower z): nothing below 0.
  np.testing.assert_allclose(grads(obj.lower_leaky_hard_sigmoid, z, 1.0),
                             [0.0, 0.0, 1.0, 1.0, 0.0])
  # Incoming gradient -1 (descent would raise z): 0.01 below 0, none above 1.
  np.testing.assert_allclose(grads(obj.lower_leaky_hard_sigmoid, z, -1.0),
                             [-0.01, -0.01, -1.0, -1.0, 0.0])


def test_upper_leaky_hard_sigmoid_values_and_gradients():
  z = jnp.array([-0.5, 0.5, 1.5, 3.0])
  np.testing.assert_allclose(obj.upper_leaky_hard_sigmoid(z),
                             [0.0, 0.5, 1.005, 1.02], rtol=1e-6)
  for sign in (1.0, -1.0):
    np.testing.assert_allclose(grads(obj.upper_leaky_hard_sigmoid, z, sign),
                               sign * np.array([0.0, 1.0, 0.01, 0.01]),
                               rtol=1e-6)


def test_gate_is_the_written_mlp():
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  gate = dict(w1=jax.random.normal(k[0], (3, 5)),
              b1=jax.random.normal(k[1], (3, 5)),
              w2=jax.random.normal(k[2], (3, 5)),
              b2=jax.random.normal(k[3], (3,)))
  h = jnp.array([0.3, -1.2, 2.0])
  want = [float(gate["w2"][c] @ jax.nn.gelu(
      gate["w1"][c] * h[c] + gate["b1"][c], approximate=False)
      + gate["b2"][c]) for c in range(3)]
  np.testing.assert_allclose(obj.gate_logits(gate, h), want, rtol=1e-5)


def test_gelu_is_the_exact_gelu_with_its_derivative():
  """x Φ(x) and d/dx = Φ(x) + x φ(x), in float64 by the standard library."""
  x = np.linspace(-8.0, 8.0, 161, dtype=np.float32)
  phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
  pdf = np.exp(-0.5 * x.astype(np.float64) ** 2) / math.sqrt(2 * math.pi)
  np.testing.assert_allclose(obj.gelu(x), x * phi, atol=2e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(obj.gelu))(x), phi + x * pdf,
                             atol=2e-6)
  np.testing.assert_allclose(obj.gelu(x), jax.nn.gelu(x, approximate=False),
                             atol=2e-6)


def constant_gates(params, z):
  """Gates whose pre-activation is `z` whatever h (w1 = 0, w2 = 0)."""
  gates = {k: dict(w1=jnp.zeros_like(g["w1"]), b1=g["b1"],
                   w2=jnp.zeros_like(g["w2"]),
                   b2=jnp.full_like(g["b2"], z))
           for k, g in params.gates.items()}
  return params.replace(gates=gates)


@pytest.fixture
def setup(mlp):
  apply_fn, params, sample = mlp
  target = Target(apply_fn, params,
                  selection.select_leaves(params, r"\['w'\]"))
  method = SPD(n_components={L1: 3, L2: 4}, importance_coeff=0.5,
               importance_p=1.5, stochastic_coeff=2.0, layerwise_coeff=3.0,
               faithfulness_coeff=1.5, gate_hidden=5)
  p = method.init_params(jax.random.PRNGKey(1), target, sample)
  plan = method.plan(target, sample, 8, p)
  return target, method, plan, p, sample(jax.random.PRNGKey(2), 8)


def test_own_c_per_matrix_and_rank_one_factors(setup):
  _, _, plan, p, _ = setup
  assert plan.labels == (L1, L2)
  assert p.U[L1].shape == (3, 4, 1) and p.V[L1].shape == (3, 1, 6)
  assert p.U[L2].shape == (4, 6, 1) and p.V[L2].shape == (4, 1, 3)
  assert p.gates[L2]["w1"].shape == (4, 5) and p.gates[L2]["b2"].shape == (4,)


def dense_forward(params, x, W1, W2):
  b = params["layer1"]["b"]
  return np.maximum(x @ W1 + b, 0) @ W2


def weights_and_sums(tp, p):
  """`(W1, W2, S1, S2)`: the MLP's weights and its subcomponents' sums."""
  return (np.asarray(tp["layer1"]["w"]), np.asarray(tp["layer2"]["w"]),
          np.einsum("ci,co->io", p.U[L1][..., 0], p.V[L1][:, 0]),
          np.einsum("ci,co->io", p.U[L2][..., 0], p.V[L2][:, 0]))


def test_loss_terms_match_a_hand_computation(setup, mlp):
  """With z = 2 everywhere, G = 1 (masks are 1 whatever r) and
  G_upper = 1.01, so every term has a closed form."""
  target, method, plan, p, x = setup
  p = constant_gates(p, 2.0)
  total, m = obj.loss_fn(p, x, target, method, plan, jax.random.PRNGKey(3))
  tp = mlp[1]
  W1, W2, S1, S2 = weights_and_sums(tp, p)
  x = np.asarray(x)
  y = dense_forward(tp, x, W1, W2)
  faith = (np.sum((W1 - S1) ** 2) + np.sum((W2 - S2) ** 2)) / (24 + 18)
  stoch = np.mean((dense_forward(tp, x, S1, S2) - y) ** 2)
  layer = (np.mean((dense_forward(tp, x, S1, W2) - y) ** 2)
           + np.mean((dense_forward(tp, x, W1, S2) - y) ** 2)) / 2
  imp = 7 * (1.01 + 1e-12) ** 1.5
  np.testing.assert_allclose(m["faithfulness"], faith, rtol=1e-5)
  np.testing.assert_allclose(m["stochastic"], stoch, rtol=1e-5)
  np.testing.assert_allclose(m["layerwise"], layer, rtol=1e-5)
  np.testing.assert_allclose(m["importance"], imp, rtol=1e-5)
  np.testing.assert_allclose(
      total, 1.5 * faith + 2 * stoch + 3 * layer + 0.5 * imp, rtol=1e-5)
  assert float(m["l0"]) == 7.0


def test_subset_routing_masks_a_random_subset_per_example(setup, mlp):
  """`layerwise_routing='subset'` with G = 1: each example runs its routed
  matrices as their subcomponents' sum and the others at the target's
  weights; every example routes at least one, and the draws are those of
  `routing.subset_routing`."""
  from apd_jax.methods import routing  # noqa: PLC0415
  target, method, plan, p, x = setup
  p = constant_gates(p, 2.0)
  method = method.replace(layerwise_routing="subset")
  key = jax.random.PRNGKey(3)
  _, m = obj.loss_fn(p, x, target, method, plan, key)
  k_route = jax.random.split(jax.random.split(key)[1])[0]
  routes = routing.subset_routing(k_route, (8, 1), plan.labels)
  r1, r2 = (np.asarray(routes[k][:, 0]) for k in (L1, L2))
  assert np.all(r1 | r2) and np.any(r1 & r2) and np.any(r1 ^ r2)
  tp = mlp[1]
  W1, W2, S1, S2 = weights_and_sums(tp, p)
  x = np.asarray(x)
  y = dense_forward(tp, x, W1, W2)
  out = np.stack([dense_forward(tp, x[b:b + 1], S1 if r1[b] else W1,
                                S2 if r2[b] else W2)[0] for b in range(8)])
  np.testing.assert_allclose(m["layerwise"], np.mean((out - y) ** 2),
                             rtol=1e-5)


def test_importance_minimality_is_summed_over_layers_mean_over_batch():
  g1 = jnp.array([[0.0, 0.5], [1.0, 0.5]])
  g2 = jnp.array([[0.2], [0.4]])
  want = (0 + 1) / 2 + (0.25 + 0.25) / 2 + (0.04 + 0.16) / 2
  np.testing.assert_allclose(obj.importance_minimality([g1, g2], 2.0), want,
                             rtol=1e-6)


def test_masks_lie_between_g_and_one():
  G = [jnp.full((4000, 3), 0.3)]
  m = obj.stochastic_masks(jax.random.PRNGKey(0), G)[0]
  assert float(m.min()) >= 0.3 and float(m.max()) <= 1.0
  np.testing.assert_allclose(float(m.mean()), 0.65, atol=0.01)
  ones = obj.stochastic_masks(jax.random.PRNGKey(0), [jnp.ones((5, 3))])[0]
  np.testing.assert_array_equal(ones, 1.0)


def test_masks_one_give_the_full_decomposition_and_r0_the_g_masked(setup,
                                                                   mlp):
  target, _, plan, p, x = setup
  tp = mlp[1]
  S = {n: np.einsum("ci,co->cio", p.U[n][..., 0], p.V[n][:, 0])
       for n in (L1, L2)}
  xs = np.asarray(x)
  # G = 1: masks are all 1 -> the sum of all subcomponents.
  ones = obj.stochastic_masks(jax.random.PRNGKey(0),
                              [jnp.ones((8, 3)), jnp.ones((8, 4))])
  y = obj.masked_forward(target, p, plan, ones, x)[0]
  np.testing.assert_allclose(
      y, dense_forward(tp, xs, S[L1].sum(0), S[L2].sum(0)), rtol=1e-5,
      atol=1e-6)
  # r = 0: masks are G -> per-example weights Σ_c G_bc u_c v_cᵀ.
  G = jax.tree.map(np.asarray, obj.causal_importances(p, target, plan, x))
  y = obj.masked_forward(target, p, plan, [G[L1], G[L2]], x)[0]
  want = [dense_forward(tp, xs[b:b + 1],
                        np.tensordot(G[L1][b], S[L1], 1),
                        np.tensordot(G[L2][b], S[L2], 1))[0]
          for b in range(8)]
  np.testing.assert_allclose(y, np.stack(want), rtol=1e-5, atol=1e-6)


def test_p_anneals_linearly_between_the_fractions():
  s = SPD(n_components=2, importance_coeff=1.0, importance_p=2.0,
          importance_p_final=1.0, p_anneal_start=0.5, p_anneal_end=0.75)
  got = [float(obj.annealed_p(s, 2.0, jnp.float32(t)))
         for t in (0.0, 0.5, 0.625, 0.75, 1.0)]
  np.testing.assert_allclose(got, [2.0, 2.0, 1.5, 1.0, 1.0])


def test_a_leaf_used_twice_gets_a_gate_per_use():
  params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
  sample = tms.sampler(n_features=5, feature_probability=0.1)
  target = Target(tms.apply, params, ("['W']",))
  plan = SPD(n_components=4, importance_coeff=1.0).plan(target, sample, 8,
                                                        None)
  assert plan.labels == ("['W']#0", "['W']#1")
  assert plan.transposed == (True, False)


@pytest.mark.parametrize("kw, message", [
    (dict(n_components=0), "n_components"),
    (dict(n_components={"a": 0}), "n_components"),
    (dict(importance_p=0.0), "importance_p"),
    (dict(importance_coeff=-1.0), "importance_coeff"),
    (dict(stochastic_coeff=0.0, layerwise_coeff=0.0), "nothing"),
    (dict(recon="l1"), "recon"),
    (dict(importance_p_final=1.0, p_anneal_start=0.8, p_anneal_end=0.2),
     "p_anneal"),
    (dict(ci_fn="gates"), "ci_fn"),
    (dict(ci_fn="transformer", ci_d_model=10, ci_heads=2), "even head"),
])
def test_bad_options_are_named(kw, message):
  with pytest.raises(ValueError, match=message):
    SPD(**{**dict(n_components=3, importance_coeff=1.0), **kw})


@pytest.mark.parametrize("ci_fn", ["layerwise", "global"])
def test_whole_input_ci_functions_train_spd(ci_fn):
  """SPD with VPD's causal-importance functions: their parameters are
  those of `ci_kinds.init`, its G their squashed logits, and (layerwise)
  a short run lowers the reconstruction."""
  import apd_jax  # noqa: PLC0415
  from apd_jax.methods import ci_kinds  # noqa: PLC0415
  params, _ = tms.train(jax.random.PRNGKey(0), n_features=5, n_hidden=2,
                        steps=500)
  sample = tms.sampler(n_features=5, feature_probability=0.05)
  m = SPD(n_components=10, importance_coeff=1e-3, ci_fn=ci_fn,
          ci_hidden=(12,))
  target = Target(tms.apply, params, ("['W']",))
  comps = m.init_params(jax.random.PRNGKey(1), target, sample)
  plan = m.plan(target, sample, 8, comps)
  want = ci_kinds.init(jax.random.fold_in(jax.random.PRNGKey(1), 1), m,
                       {"['W']#0": 5, "['W']#1": 2},
                       {"['W']#0": 10, "['W']#1": 10})
  for a, b in zip(jax.tree.leaves(comps.gates), jax.tree.leaves(want),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  x = sample(jax.random.PRNGKey(2), 8)
  _, inputs = obj.target_pass(target, x)
  z = ci_kinds.logits(m, comps.gates, dict(zip(plan.labels, inputs,
                                               strict=True)),
                      {"['W']#0": 10, "['W']#1": 10})
  G = obj.causal_importances(comps, target, plan, x, m)
  for k in plan.labels:
    np.testing.assert_allclose(G[k], jnp.clip(z[k], 0, 1)[:, 0], rtol=1e-6)
  if ci_fn == "global":
    return
  r = apd_jax.decompose(tms.apply, params, sample, include="W", method=m,
                        training=apd_jax.Training(
                            steps=200, batch_size=256, progress=False,
                            log_every=100, eval_batches=1))
  assert r.history[-1]["stochastic"] < r.history[0]["stochastic"]
  assert r.causal_importances(x)["['W']#1"].shape == (8, 10)


def test_n_components_dict_must_name_the_decomposed_leaves(setup, mlp):
  target, _, _, _, _ = setup
  with pytest.raises(ValueError, match="missing"):
    SPD(n_components={L1: 3}, importance_coeff=1.0).check(target, mlp[2], 8)


def hand_built_resid_decomposition(owner):
  """A 1-layer residual MLP with orthonormal embeddings and SPD factors
  `u_c = W_E[c]`, `v_c = W_E[c] W_in`, gates `z = gelu(h)`: on the one-hot
  input e_f only subcomponent f has h = 1 (G = gelu(1) = 0.84). `owner[f]`
  is the subcomponent whose factors are feature f's."""
  from apd_jax import Decomposition  # noqa: PLC0415
  from apd_jax.targets import resid_mlp  # noqa: PLC0415
  n, d = 4, 8
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(d, n)))
  W_E = jnp.asarray(q.T)                                   # [4, 8] rows ⊥
  W_in = jax.random.normal(jax.random.PRNGKey(1), (d, 3))
  params = {"W_E": W_E, "layers": [{"W_in": W_in, "W_out": W_in.T}]}
  target = Target(resid_mlp.apply, params,
                  ("['layers'][0]['W_in']", "['layers'][0]['W_out']"), True)
  U = {"['layers'][0]['W_in']": W_E[jnp.asarray(owner)][:, :, None],
       "['layers'][0]['W_out']": jnp.zeros((n, 3, 1))}
  V = {"['layers'][0]['W_in']": (W_E[jnp.asarray(owner)] @ W_in)[:, None],
       "['layers'][0]['W_out']": jnp.zeros((n, 1, d))}
  gate = dict(w1=jnp.ones((n, 1)), b1=jnp.zeros((n, 1)),
              w2=jnp.ones((n, 1)), b2=jnp.zeros((n,)))
  method = SPD(n_components=n, importance_coeff=1.0, gate_hidden=1)
  sample = resid_mlp.sampler(n_features=n, feature_probability=0.5)
  plan = method.plan(target, sample, 4, None)
  p = obj.SPDParams(U=U, V=V, gates={k: gate for k in plan.labels})
  return Decomposition(target, method, plan, p, {}, [])


def test_spd_recovery_finds_each_features_own_subcomponent():
  from apd_jax.analysis import features  # noqa: PLC0415
  rec = features.spd_recovery(hand_built_resid_decomposition([2, 0, 3, 1]))
  np.testing.assert_allclose(rec["cosine"], 1.0, rtol=1e-5)
  np.testing.assert_array_equal(rec["best"][:, 0], [1, 3, 0, 2])
  assert (rec["n_recovered"], rec["n_own"]) == (4, 4)
  # Subcomponents 0 and 1 both hold feature 0's factors and none holds
  # feature 1's: feature 1 has nothing active (contribution 0, cosine 0).
  rec = features.spd_recovery(hand_built_resid_decomposition([0, 0, 2, 3]))
  np.testing.assert_allclose(rec["cosine"], [1, 0, 1, 1], atol=1e-5)
  assert rec["best"][1, 0] == -1
  assert (rec["n_recovered"], rec["n_own"]) == (3, 3)
