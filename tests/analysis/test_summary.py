"""The component summary and top inputs on hand-built decompositions of a
linear map `y = x W`, `W = I_4`, with `P_c = s_c e_c e_cᵀ`, whose answers
follow by hand."""

import jax
import jax.numpy as jnp
import numpy as np

from apd_jax import APD
from apd_jax import SPD
from apd_jax import Decomposition
from apd_jax import engine
from apd_jax.analysis import summary as summary_lib
from apd_jax.core.components import Components
from apd_jax.core.target import Target
from apd_jax.methods import spd_objective as obj

NAME = "['W']"


def linear(params, x):
  return x @ params["W"]


def target():
  return Target(linear, {"W": jnp.eye(4)}, (NAME,), False)


def factors(scale):
  """`U_c = s_c e_c [4, 1]`, `V_c = e_c [1, 4]`: P_c = s_c e_c e_cᵀ."""
  e = jnp.eye(4)
  return ({NAME: (e * jnp.asarray(scale)[:, None])[:, :, None]},
          {NAME: e[:, None, :]})


def apd_sampler(key, n):
  """Example b: feature b % 2 at (b + 1) / n, feature 3 at 1, feature 2
  never: x = v_b e_{b%2} + e_3."""
  del key
  b = jnp.arange(n)
  v = (b + 1.0) / n
  x = jnp.zeros((n, 4)).at[b, b % 2].set(v)
  return x.at[:, 3].set(1.0)


def apd_decomposition():
  """Attributions A_c(x)² = (s_c x_c)², so top-k with k = 2 per example
  keeps c3 always, c0 or c1 by parity, and c2 (x_2 = 0) never. The per-
  example rule's threshold is the smallest A² batch top-k keeps on a batch
  of 8, `(1/8)²`, so it keeps the same."""
  U, V = factors([1.0, 1.0, 1.0, 1.0])
  comps = Components(U=U, V=V)
  method = APD(n_components=4, topk=2.0, rank=1)
  t = target()
  plan = method.plan(t, apd_sampler, 8, comps)
  return Decomposition(t, method, plan, comps,
                       {"topk_threshold": (1 / 8) ** 2}, [], apd_sampler)


def spd_sampler(key, n):
  """Example b: feature 2 + b % 2 at 1 (one-hot)."""
  del key
  b = jnp.arange(n)
  return jnp.zeros((n, 4)).at[b, 2 + b % 2].set(1.0)


def spd_decomposition():
  """Gates z_c = w2 gelu(h_c) + b2 on h_c = x·u_c: c0 always on (z = 1),
  c1 dead (z = −1), c2 and c3 on where their feature is (z = 2 gelu(s_c)
  ≥ 1, G = 1) and off elsewhere (z = 0)."""
  U, V = factors([1.0, 2.0, 3.0, 0.5])
  gate = dict(w1=jnp.ones((4, 1)), b1=jnp.zeros((4, 1)),
              w2=jnp.array([[0.0], [0.0], [2.0], [4.0]]),
              b2=jnp.array([1.0, -1.0, 0.0, 0.0]))
  method = SPD(n_components=4, importance_coeff=1.0, gate_hidden=1)
  t = target()
  plan = method.plan(t, spd_sampler, 8, None)
  params = obj.SPDParams(U=U, V=V, gates={NAME: gate})
  return Decomposition(t, method, plan, params, {}, [], spd_sampler)


def rows(summary):
  return {c.index: c for c in summary.components}


def test_spectrum_and_effective_rank_from_the_factors():
  key = jax.random.PRNGKey(0)
  U = jax.random.normal(key, (3, 6, 4))
  V = jax.random.normal(jax.random.fold_in(key, 1), (3, 4, 5))
  sigma = summary_lib.factor_spectrum(U, V)         # rank <= 4 of [6, 5]
  dense = np.sort(np.linalg.svd(np.einsum("cim,cmo->cio", U, V),
                                compute_uv=False), axis=1)
  np.testing.assert_allclose(np.sort(sigma, axis=1), dense[:, 1:],
                             rtol=1e-4)
  np.testing.assert_allclose(dense[:, 0], 0.0, atol=1e-5)
  np.testing.assert_allclose(
      summary_lib.effective_rank(jnp.array([[2.0, 2.0, 0.0], [1.0, 0.0, 0.0],
                                            [0.0, 0.0, 0.0]])),
      [2.0, 1.0, 0.0], rtol=1e-6)


def test_apd_summary_finds_the_always_on_the_dead_and_the_feature_ones():
  s = apd_decomposition().summary(batch_size=8, n_batches=2)
  r = rows(s)
  assert s.method == "APD" and s.n_examples == 16
  assert [r[c].frequency for c in range(4)] == [0.5, 0.5, 0.0, 1.0]
  assert [r[c].status for c in range(4)] == ["", "", "dead", "always on"]
  # Mean A² = mean of v_b² over the examples that use the component.
  v = np.arange(1, 9) / 8
  np.testing.assert_allclose(r[0].mean_score, np.mean(v[0::2] ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(r[1].mean_score, np.mean(v[1::2] ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(r[3].mean_score, 1.0, rtol=1e-5)
  assert np.isnan(r[2].mean_score)
  assert all(r[c].norm == {NAME: 1.0} for c in range(4))
  assert all(abs(r[c].effective_rank[NAME] - 1.0) < 1e-6 for c in range(4))
  assert s.totals["faithfulness"] < 1e-12
  assert s.totals["l0"] == 2.0       # the counts are the summary's own:
  assert "dead_components" not in s.totals and "alive" not in s.totals
  assert s.counts() == {"all": dict(total=4, alive=3, dead=1, always_on=1)}
  table = s.table()
  assert "3 of 4 alive, 1 always on" in table
  lines = table.splitlines()
  assert lines[3].split()[:2] == ["3", "1.0000"]   # most frequent first
  assert len(lines) == 6                           # dead ones not listed
  md = s.markdown()
  assert md.count("\n| ") == 5 and "| 2 | 0.0000 | – |" in md
  d = s.to_dict()
  assert d["components"][2]["status"] == "dead" and d["n_examples"] == 16


def test_apd_top_inputs_and_their_ablation():
  tops = apd_decomposition().top_inputs(k=3, batch_size=8, n_batches=1)
  by = {t.index: t for t in tops}
  assert sorted(by) == [0, 1, 3]                   # the dead one left out
  v = np.arange(1, 9) / 8
  # c0: the even examples with the largest v first; A² = v², and without
  # c0 the output loses v e_0: MSE over the 4 outputs v² / 4.
  np.testing.assert_allclose(by[0].inputs[:, 0], v[[6, 4, 2]])
  np.testing.assert_allclose(by[0].scores, v[[6, 4, 2]] ** 2, rtol=1e-5)
  np.testing.assert_allclose(by[0].ablation, v[[6, 4, 2]] ** 2 / 4,
                             rtol=1e-5)
  np.testing.assert_allclose(by[1].inputs[:, 1], v[[7, 5, 3]])
  np.testing.assert_allclose(by[3].ablation, 0.25, rtol=1e-5)
  assert by[3].frequency == 1.0
  assert summary_lib.describe_input(by[0].inputs[0]) == "x3=1.00, x0=0.88"


def test_spd_summary_on_hand_set_gates():
  s = spd_decomposition().summary(batch_size=8, n_batches=1)
  assert s.method == "SPD" and s.score == "G"
  r = rows(s)
  assert {c.group for c in s.components} == {NAME}
  assert [r[c].frequency for c in range(4)] == [1.0, 0.0, 0.5, 0.5]
  assert [r[c].status for c in range(4)] == ["always on", "dead", "", ""]
  np.testing.assert_allclose([r[c].mean_score for c in (0, 2, 3)], 1.0)
  np.testing.assert_allclose([r[c].norm[NAME] for c in range(4)],
                             [1.0, 2.0, 3.0, 0.5], rtol=1e-6)
  # faithfulness = mean over the 16 entries of (1 − s_c)² on the diagonal.
  np.testing.assert_allclose(s.totals["faithfulness"], 5.25 / 16, rtol=1e-6)
  np.testing.assert_allclose(s.totals["l0"], 2.0)
  assert s.counts() == {NAME: dict(total=4, alive=3, dead=1, always_on=1)}
  assert "product" in s.table().splitlines()[2]


def test_spd_top_inputs_ablate_within_the_product():
  tops = spd_decomposition().top_inputs(k=2, batch_size=8, n_batches=1)
  by = {t.index: t for t in tops}
  assert sorted(by) == [0, 2, 3]
  # c2 is important only on x = e_2; without it y = x (W − 3 e_2 e_2ᵀ) loses
  # 3 in output 2: MSE 9 / 4.
  np.testing.assert_allclose(by[2].inputs, [np.eye(4)[2]] * 2)
  np.testing.assert_allclose(by[2].ablation, 9 / 4, rtol=1e-5)
  np.testing.assert_allclose(by[3].ablation, 0.25 / 4, rtol=1e-5)
  # c0 is always important, but switching it off changes nothing here.
  np.testing.assert_allclose(by[0].ablation, 0.0, atol=1e-7)


def same_tops(a, b):
  """Two lists of top inputs with the same components, inputs and
  positions, and scores and ablations equal to float32 rounding."""
  assert [(t.group, t.index) for t in a] == [(t.group, t.index) for t in b]
  for s, t in zip(a, b, strict=True):
    assert s.frequency == t.frequency
    np.testing.assert_array_equal(s.inputs, t.inputs)
    if s.positions is not None or t.positions is not None:
      np.testing.assert_array_equal(s.positions, t.positions)
    np.testing.assert_allclose(s.scores, t.scores, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(s.ablation, t.ablation, rtol=1e-5,
                               atol=1e-7)


def test_top_inputs_in_passes_of_the_budget_equal_all_at_once():
  """Outputs of 4 floats: 32 bytes per example (on and off), so 100 bytes
  make passes of 3 examples (the last of the 16 padded)."""
  for result in (apd_decomposition(), spd_decomposition()):
    key = jax.random.PRNGKey(0)
    opts = dict(k=3, batch_size=8, n_batches=2, max_ties=4)
    whole = summary_lib.top_inputs(result, result.sample_fn, key, **opts)
    assert summary_lib.examples_per_pass(result, jnp.zeros((8, 4)),
                                         100) == 3
    parts = summary_lib.top_inputs(result, result.sample_fn, key,
                                   max_bytes=100, **opts)
    same_tops(whole, parts)


def tiny_lm(params, tokens):
  """Embedding, a residual GELU MLP `w1`, `w2`, tied unembedding:
  logits `[B, T, V]`."""
  h = params["embed"][tokens]
  h = h + jax.nn.gelu(h @ params["w1"]) @ params["w2"]
  return h @ params["embed"].T


def test_top_inputs_of_a_language_model_in_passes_of_the_budget():
  """SPD with KL on a tiny LM's logits: the per-position scores and
  ablations, 3 windows per pass (out of 5: the last pass padded), are
  those of one pass over all windows."""
  vocab, d, T = 61, 8, 6
  rng = np.random.default_rng(0)
  params = {"embed": jnp.asarray(rng.normal(size=(vocab, d)), jnp.float32),
            "w1": jnp.asarray(rng.normal(size=(d, 16)) / 3, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(16, d)) / 4, jnp.float32)}

  def sample(key, n):
    return jax.random.randint(key, (n, T), 0, vocab)

  method = SPD(n_components=4, importance_coeff=1e-3, recon="kl",
               gate_hidden=4)
  t = engine.make_target(tiny_lm, params, r"\['w[12]'\]", log=False)
  plan = method.plan(t, sample, 5, None)
  C, h = 4, 4
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape),  # noqa: E731
                                      jnp.float32)
  comps = obj.SPDParams(
      U={n: normal(C, w.shape[0], 1) for n, w in t.weights.items()},
      V={n: normal(C, 1, w.shape[1]) / 4 for n, w in t.weights.items()},
      gates={k: dict(w1=normal(C, h), b1=normal(C, h), w2=normal(C, h),
                     b2=normal(C)) for k in plan.labels})
  result = Decomposition(t, method, plan, comps, {}, [], sample)
  window = 2 * T * vocab * 4                    # on and off, float32
  x = sample(jax.random.PRNGKey(1), 5)
  assert summary_lib.examples_per_pass(result, x, 3 * window + 7) == 3
  opts = dict(k=2, batch_size=5, n_batches=1, max_ties=2)
  whole = summary_lib.top_inputs(result, sample, jax.random.PRNGKey(1),
                                 **opts)
  parts = summary_lib.top_inputs(result, sample, jax.random.PRNGKey(1),
                                 max_bytes=3 * window, **opts)
  assert whole and all(t.positions is not None for t in whole)
  same_tops(whole, parts)
