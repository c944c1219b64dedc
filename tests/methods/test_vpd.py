"""VPD through the engine: its terms on a hand-made case, a short run that
lowers its reconstruction terms, its persistent sources across steps and a
checkpoint, a sweep equal to separate runs, and the analyses."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_seed_sweep_equals_runs
from conftest import assert_trees_close
from conftest import run_stopped_and_resumed

import apd_jax
from apd_jax import engine
from apd_jax.cli import config as cli_config
from apd_jax.cli import scoreboard
from apd_jax.methods import adversarial
from apd_jax.methods import spd_objective
from apd_jax.methods import vpd_objective as obj
from apd_jax.targets import tms

TRAINING = apd_jax.Training(steps=300, batch_size=256, lr=1e-3,
                            progress=False, log_every=100, eval_batches=1)


@pytest.fixture(scope="module")
def tms_target():
  params, _ = tms.train(jax.random.PRNGKey(0), n_features=5, n_hidden=2,
                        steps=1000)
  return params, tms.sampler(n_features=5, feature_probability=0.05)


def method(**kw):
  """VPD on TMS; without its faithfulness warm-up unless asked (one
  compile fewer per test: the warm-up has its own test, and the short run
  keeps the default)."""
  return apd_jax.VPD(**{**dict(n_components=10, importance_coeff=1e-3,
                               frequency_coeff=0.0,
                               faithfulness_warmup_steps=0), **kw})


def test_options_are_checked():
  with pytest.raises(ValueError, match="ci_fn"):
    method(ci_fn="attention")
  with pytest.raises(ValueError, match="even head width"):
    method(ci_fn="transformer", ci_d_model=12, ci_heads=4)
  with pytest.raises(ValueError, match="faithfulness_warmup_steps"):
    method(faithfulness_warmup_steps=-1)
  with pytest.raises(ValueError, match="both 0"):
    method(stochastic_coeff=0.0, adversarial_coeff=0.0)
  with pytest.raises(ValueError, match="n_components"):
    method(n_components=0)
  assert method(n_components={"b": 3, "a": 2}).n_components == (
      ("a", 2), ("b", 3))


def test_faithfulness_is_normalised_per_matrix():
  W = {"a": jnp.ones((2, 3)), "b": 2 * jnp.ones((3, 1))}
  # Components summing to 0.5·W_a and to W_b: (0.25 + 0) / 2.
  params = obj.VPDParams(
      U={"a": jnp.full((1, 2, 1), 0.5), "b": jnp.full((2, 3, 1), 1.0)},
      V={"a": jnp.ones((1, 1, 3)), "b": jnp.ones((2, 1, 1))}, ci={})
  np.testing.assert_allclose(obj.faithfulness(W, params), 0.125, rtol=1e-6)


def test_coefficients_route_and_keep_the_delta_source_raw():
  ci = {"p": jnp.array([[0.2, 1.0], [0.0, 0.5]])}          # [B=2, C=2]
  src = {"p": jnp.array([0.5, 0.25, 0.75])}                 # [C+1], shared
  out = obj.coefficients(ci, src)["p"]
  want = [[0.2 + 0.8 * 0.5, 1.0, 0.75], [0.5, 0.5 + 0.5 * 0.25, 0.75]]
  np.testing.assert_allclose(out, want, rtol=1e-6)
  routed = obj.coefficients(ci, src, {"p": jnp.array([True, False])})["p"]
  np.testing.assert_allclose(routed, [want[0], [1.0, 1.0, 1.0]], rtol=1e-6)


def test_a_short_run_lowers_its_reconstructions(tms_target):
  params, sample = tms_target
  m = method(gamma_start=0.1, gamma_end=0.1, faithfulness_warmup_steps=400)
  result = apd_jax.decompose(tms.apply, params, sample, include="W",
                             method=m, training=TRAINING)
  first, last = result.history[0], result.history[-1]
  for term in ("faithfulness", "stochastic", "adversarial", "loss"):
    assert last[term] < first[term], (term, first[term], last[term])
  for key in ("pgd_recon", "stochastic_recon", "ci_masked_recon", "l0",
              "alive", "faithfulness"):
    assert np.isfinite(result.metrics[key])
  # The adversary's worst case is no better than uniform sources.
  assert result.metrics["pgd_recon"] >= result.metrics["stochastic_recon"]
  x = sample(jax.random.PRNGKey(1), 7)
  ci = result.causal_importances(x)
  assert set(ci) == {"['W']#0", "['W']#1"}
  assert all(g.shape == (7, 10) for g in ci.values())
  assert all(0 <= float(g.min()) and float(g.max()) <= 1 for g in ci.values())
  summary = result.summary(sample_fn=sample, n_batches=1)
  assert summary.method == "VPD" and summary.score == "ci"


def test_sources_persist_ascend_and_resume(tms_target, tmp_path):
  params, sample = tms_target
  m = method(n_warmup=1, source_warmup_frac=0.0)   # full step size at once
  training = TRAINING.replace(steps=8)
  target = engine.make_target(tms.apply, params, "W", log=False)
  state0 = engine.init_state(m, target, training, sample_fn=sample)
  src0 = state0.method_state["sources"]
  assert set(src0.sources) == {"['W']#0", "['W']#1"}
  assert src0.sources["['W']#0"].shape == (11,)      # C + 1, shared
  plan = m.plan(target, sample, training.batch_size, state0.components)
  step = engine.make_train_step(m, plan, target, sample, training)
  key = engine.run_keys(0)[1]
  # With a warm-up the step size starts at 0: step 0 leaves them.
  warm = m.replace(source_warmup_frac=0.5)
  step0 = engine.make_train_step(warm, plan, target, sample, training)
  same = jax.jit(step0)(state0, key)[0].method_state["sources"].sources
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(src0.sources),
                  strict=True):
    np.testing.assert_array_equal(a, b)

  whole, _, _, resumed = run_stopped_and_resumed(state0, step, key,
                                                 tmp_path / "c")
  src = whole.method_state["sources"]
  # Two ascents a step (one warm-up, one from the main backward), through
  # Adam, kept in [0, 1].
  assert int(optax.tree_utils.tree_get(src.opt_state, "count")) == 16
  moved = [float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(src.sources), jax.tree.leaves(src0.sources),
      strict=True)]
  assert min(moved) > 0
  assert all(0 <= float(r.min()) and float(r.max()) <= 1
             for r in jax.tree.leaves(src.sources))
  # Stopped at step 4 and resumed from its checkpoint: the uninterrupted
  # run, sources and moments included.
  assert_trees_close(resumed, whole, rtol=1e-5, atol=1e-7)


def test_sweep_of_two_seeds_equals_two_runs(tms_target):
  params, sample = tms_target
  assert_seed_sweep_equals_runs(tms.apply, params, sample,
                                method(ci_fn="global"),
                                TRAINING.replace(steps=20, log_every=10),
                                rtol=1e-4, atol=1e-6)


def test_the_ascent_raises_the_adversarial_loss(tms_target):
  """Sources after the warm-up ascents reconstruct worse than before."""
  params, sample = tms_target
  m = method(n_warmup=5)
  target = engine.make_target(tms.apply, params, "W", log=False)
  comps = m.init_params(jax.random.PRNGKey(0), target, sample)
  plan = m.plan(target, sample, 64, comps)
  state = m.init_state(jax.random.PRNGKey(1), target, comps, sample, 64)
  x = sample(jax.random.PRNGKey(2), 64)
  y, inputs = obj.product_inputs(target, plan, x)
  ci = obj.importances(m, comps, plan, inputs)[0]

  def loss(r):
    return obj.masked_recon(target, comps, plan, y, x,
                            obj.coefficients(ci, r), obj.losses.mse)

  after = adversarial.ascend(loss, state["sources"], 5, lr=0.05)
  assert float(loss(after.sources)) > float(loss(state["sources"].sources))


@pytest.mark.parametrize("name,C,hidden,coeffs,steps,args", [
    ("vpd_tms_5_2", 20, (50,), (8e-4, 4e-4), 20_000, (None, "identity")),
    ("vpd_tms_40_10", 100, (200,), (6e-5, 3e-5), 20_000, (None, "identity")),
    ("vpd_resid_mlp_1", 200, (400,), (1e-6, 5e-7), 50_000, (None,)),
])
def test_the_toy_configs_build_the_stated_method(name, C, hidden, coeffs,
                                                 steps, args):
  configs = str(pathlib.Path(__file__).resolve().parents[2] / "configs")
  for arg in args:
    c = scoreboard.load_config(configs, name, arg)
    cli_config.check(c)
    m, training = cli_config.method_and_training(c)
    assert isinstance(m, apd_jax.VPD) and m.n_components == C
    assert (m.ci_hidden, m.importance_coeff, m.frequency_coeff) == (
        hidden, *coeffs)
    assert (m.merged, m.source_b1, m.source_scope, m.grad_clip,
            m.ci_grad_clip, m.faithfulness_warmup_steps) == (
                True, 0.01, "per_example", 1.0, 1.0, 200)
    assert (training.steps, training.lr_schedule, training.lr_final_frac
            ) == (steps, "cosine", 0.1)
    if name.startswith("vpd_tms"):
      assert c.target.n_hidden_layers == (arg == "identity")
      assert c.target.untied           # the authors' two matrices


def test_the_frequency_average_starts_at_this_batch_and_is_state(
    tms_target):
  """Debiased, the average after one update is that batch's f: the first
  step's frequency term equals the plain one; the average is carried."""
  params, sample = tms_target
  plain = method(frequency_coeff=1e-3)
  averaged = plain.replace(frequency_halflife=10.0)
  training = TRAINING.replace(steps=4)
  target = engine.make_target(tms.apply, params, "W", log=False)
  key = engine.run_keys(0)[1]
  out = {}
  for m in (plain, averaged):
    state = engine.init_state(m, target, training, sample_fn=sample)
    plan = m.plan(target, sample, training.batch_size, state.components)
    step = jax.jit(engine.make_train_step(m, plan, target, sample,
                                          training))
    out[m] = step(state, key)
  (_, plain_metrics), (state, metrics) = out[plain], out[averaged]
  assert set(out[plain][0].method_state) == {"sources"}
  np.testing.assert_allclose(metrics["frequency"],
                             plain_metrics["frequency"], rtol=1e-5)
  ema = state.method_state["freq_ema"]
  assert int(ema.count) == 1
  beta = 2.0 ** -0.1
  assert all(float(v.max()) > 0 for v in ema.ema.values())
  # ema = (1 − β) f, so f̂ = f ≤ 1 (a mean of values in [0, 1)).
  assert all(float(v.max()) <= (1 - beta) + 1e-6 for v in ema.ema.values())


def test_per_example_sources_and_clipped_gradients(tms_target):
  """One set of sources per example of the batch, each moved by its own
  example's gradient; gradients clipped per group before Adam."""
  params, sample = tms_target
  m = method(source_scope="per_example", source_warmup_frac=0.0,
             grad_clip=1e-3, ci_grad_clip=2e-3)
  training = TRAINING.replace(steps=6, batch_size=32)
  target = engine.make_target(tms.apply, params, "W", log=False)
  state = engine.init_state(m, target, training, sample_fn=sample)
  r0 = state.method_state["sources"].sources
  assert all(r.shape == (32, 11) for r in r0.values())
  plan = m.plan(target, sample, 32, state.components)
  step = jax.jit(engine.make_train_step(m, plan, target, sample, training))
  key = engine.run_keys(0)[1]
  for _ in range(6):
    state, _ = step(state, key)
  r6 = state.method_state["sources"].sources
  # Examples whose input is all zero (TMS features are sparse) give their
  # sources no gradient: those rows stay, the others move.
  still = [np.all(np.asarray(a) == np.asarray(b), axis=-1)
           for a, b in zip(jax.tree.leaves(r6), jax.tree.leaves(r0),
                           strict=True)]
  assert any(s.any() for s in still) and any((~s).any() for s in still)
  # Clipping: each group's gradient clipped to its own global norm.
  grads = obj.VPDParams(
      U={"['W']": jnp.full((10, 2, 1), 5.0)},
      V={"['W']": jnp.zeros((10, 1, 5))},
      ci=jax.tree.map(lambda a: jnp.full_like(a, 2.0),
                      state.components.ci))
  clip = m.gradient_transform()
  out, _ = clip.update(grads, clip.init(state.components), state.components)
  for group, c in (((out.U, out.V), 1e-3), (out.ci, 2e-3)):
    np.testing.assert_allclose(optax.tree.norm(group), c, rtol=1e-5)
  assert method().gradient_transform() is None
  only = method(grad_clip=1e-3).gradient_transform()
  out, _ = only.update(grads, only.init(state.components), state.components)
  assert_trees_close(out.ci, grads.ci, rtol=0)      # the CI's left alone


def test_the_warm_up_is_adam_on_the_faithfulness_alone(tms_target):
  params, sample = tms_target
  target = engine.make_target(tms.apply, params, "W", log=False)
  key = jax.random.PRNGKey(0)
  start = method(faithfulness_warmup_steps=0).init_params(key, target, sample)
  warm = method(faithfulness_warmup_steps=30, faithfulness_warmup_lr=0.01
                ).init_params(key, target, sample)
  opt = optax.adam(0.01)
  uv = (start.U, start.V)
  opt_state = opt.init(uv)
  for _ in range(30):
    grads = jax.grad(lambda uv: obj.faithfulness(
        target.weights, start.replace(U=uv[0], V=uv[1])))(uv)
    updates, opt_state = opt.update(grads, opt_state)
    uv = optax.apply_updates(uv, updates)
  assert_trees_close((warm.U, warm.V), uv, rtol=1e-5, atol=1e-7)
  assert_trees_close(warm.ci, start.ci, rtol=0)
  assert float(obj.faithfulness(target.weights, warm)) < 0.5 * float(
      obj.faithfulness(target.weights, start))


def test_the_vpd_factor_init_reads_at_1_over_sqrt_d_in(tms_target):
  # TMS stores W [2, 5] and uses it in h = x Wᵀ (transposed: v, the 5-wide
  # side, reads) and, untied as W_up, in x' = h W_up (u, 2 wide, reads).
  params, sample = tms_target
  target = engine.make_target(tms.apply, tms.untie(params), "W|W_up",
                              log=False)
  key = jax.random.PRNGKey(3)
  spd_init = method(n_components=400).init_params(key, target, sample)
  vpd_init = method(n_components=400, factor_init="vpd").init_params(
      key, target, sample)
  plan = method(n_components=400).plan(target, sample, 1, None)
  assert sorted(zip(plan.leaves, plan.transposed, strict=True)) == [
      ("['W']", True), ("['W_up']", False)]
  scales = obj.factor_scales(target, plan, {"['W']": 400, "['W_up']": 400})
  np.testing.assert_allclose(scales["['W']"], ((5 / 400) ** 0.5,
                                               (400 / 5) ** 0.5))
  np.testing.assert_allclose(scales["['W_up']"], ((5 / 2) ** 0.5, 1.0))
  for name, (a, b) in scales.items():
    np.testing.assert_allclose(vpd_init.U[name], a * spd_init.U[name],
                               rtol=1e-6)
    np.testing.assert_allclose(vpd_init.V[name], b * spd_init.V[name],
                               rtol=1e-6)
  # The standard deviations the VPD authors give: the reading factor at
  # 1/sqrt(d_in), the writing one at 1/sqrt(C) (hundreds of draws each).
  for a, want in ((vpd_init.V["['W']"], 5 ** -0.5),
                  (vpd_init.U["['W']"], 400 ** -0.5),
                  (vpd_init.U["['W_up']"], 2 ** -0.5),
                  (vpd_init.V["['W_up']"], 400 ** -0.5)):
    np.testing.assert_allclose(float(np.std(np.asarray(a))), want, rtol=0.1)
  with pytest.raises(ValueError, match="factor_init"):
    method(factor_init="xavier")


def test_the_scalar_ci_function_is_spds_on_the_same_factors(tms_target):
  params, sample = tms_target
  target = engine.make_target(tms.apply, tms.untie(params), "W|W_up",
                              log=False)
  m = method(ci_fn="scalar", ci_hidden=(8,))
  p = m.init_params(jax.random.PRNGKey(5), target, sample)
  plan = m.plan(target, sample, 1, None)
  assert {k: v["w1"].shape for k, v in p.ci.items()} == {
      k: (10, 8) for k in plan.labels}
  x = sample(jax.random.PRNGKey(6), 7)
  _, inputs = obj.product_inputs(target, plan, x)
  lower, upper = obj.importances(m, p, plan, inputs)
  spd_params = spd_objective.SPDParams(U=p.U, V=p.V, gates=p.ci)
  G, G_up = spd_objective.importances(
      spd_params, plan, [inputs[k] for k in plan.labels])
  for k, g, gu in zip(plan.labels, G, G_up, strict=True):
    np.testing.assert_allclose(lower[k], g, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(upper[k], gu, rtol=1e-6, atol=1e-7)
  # Its gradient reaches the reading factors through h_c = a · u_c (W is
  # used transposed: read by v).
  dU, dV = jax.grad(lambda U, V: sum(jnp.sum(v) for v in obj.importances(
      m, p.replace(U=U, V=V), plan, inputs)[1].values()), (0, 1))(p.U, p.V)
  assert float(jnp.abs(dV["['W']"]).max()) > 0
  assert float(jnp.abs(dU["['W_up']"]).max()) > 0
  assert float(jnp.abs(dU["['W']"]).max()) == 0


def test_the_ci_function_learns_at_its_own_rate(tms_target):
  """Adam's step is proportional to its rate: the CI function's moves by
  `ci_lr_scale` times what it does at 1, the factors' the same; a sweep's
  runs may each have their own (one compiled step, the scale traced)."""
  params, sample = tms_target
  training = TRAINING.replace(steps=1, batch_size=64)
  target = engine.make_target(tms.apply, params, "W", log=False)
  m = method()
  state0 = engine.init_state(m, target, training, sample_fn=sample)
  plan = m.plan(target, sample, 64, state0.components)
  step = jax.jit(engine.make_train_step(m, plan, target, sample, training))
  key = engine.run_keys(0)[1]
  moves = []
  for scale in (1.0, 0.25):
    hypers = jax.tree.map(jnp.float32, m.hypers(ci_lr_scale=scale))
    state1, _ = step(state0, key, hypers)
    moves.append(jax.tree.map(lambda a, b: a - b, state1.components,
                              state0.components))
  # Moves read as differences of float32 parameters of size about 1: to
  # their rounding, 1.2e-7.
  assert_trees_close((moves[1].U, moves[1].V), (moves[0].U, moves[0].V),
                     rtol=0, atol=2.4e-7)
  assert_trees_close(moves[1].ci, jax.tree.map(lambda d: 0.25 * d,
                                               moves[0].ci),
                     rtol=0, atol=2.4e-7)
  assert float(optax.tree.norm(moves[0].ci)) > 1e-3
  # The option itself, for a run without hypers: the same move.
  static = jax.jit(engine.make_train_step(m.replace(ci_lr_scale=0.25), plan,
                                          target, sample, training))
  alone = jax.tree.map(lambda a, b: a - b, static(state0, key)[0].components,
                       state0.components)
  assert_trees_close(alone.ci, moves[1].ci, rtol=0, atol=2.4e-7)
  assert "ci_lr_scale" in apd_jax.VPD.SWEEPABLE


def seq_apply(params, x):
  """A sequence model `[T, 4] → [T, 3]`: each position through `W1`, a
  running mean over the positions, then `W2`."""
  h = jnp.tanh(x @ params["W1"])
  h = jnp.cumsum(h, axis=-2) / jnp.arange(1, x.shape[-2] + 1)[:, None]
  return h @ params["W2"]


def seq_target():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {"W1": jax.random.normal(k1, (4, 6)) / 2,
            "W2": jax.random.normal(k2, (6, 3)) / 2}
  return params, lambda key, n: jax.random.normal(key, (n, 5, 4))


@pytest.mark.parametrize("scope,per_position,shape", [
    ("shared", True, (5, 7)), ("per_example", True, (16, 5, 7)),
    ("shared", False, (7,)), ("per_example", False, (16, 1, 7))])
def test_sources_per_position(scope, per_position, shape):
  params, sample = seq_target()
  m = method(n_components=6, source_scope=scope,
             source_per_position=per_position, ci_fn="transformer",
             ci_d_model=8, ci_heads=2, ci_blocks=1)
  target = engine.make_target(seq_apply, params, "W", log=False)
  comps = m.init_params(jax.random.PRNGKey(0), target, sample)
  state = m.init_state(jax.random.PRNGKey(1), target, comps, sample, 16)
  assert {r.shape for r in state["sources"].sources.values()} == {shape}
  plan = m.plan(target, sample, 16, comps)
  x = sample(jax.random.PRNGKey(2), 16)
  y, inputs = obj.product_inputs(target, plan, x)
  ci = obj.importances(m, comps, plan, inputs)[0]
  coefs = obj.coefficients(ci, state["sources"].sources,
                           per_example=scope == "per_example")
  r = state["sources"].sources["['W1']"]
  got = coefs["['W1']"][..., -1]                     # the Δ channel: raw
  assert got.shape == (16, 1, 5)
  want = jnp.broadcast_to(r[..., -1] if scope == "shared"
                          else r[:, None, ..., -1], (16, 1, 5))
  np.testing.assert_array_equal(got, want)


def test_a_transformer_run_on_sequences_lowers_its_reconstructions():
  params, sample = seq_target()
  m = method(n_components=6, ci_fn="transformer", ci_d_model=8, ci_heads=2,
             ci_blocks=1, ci_hidden=(16,), gamma_start=0.1, gamma_end=0.1,
             faithfulness_warmup_steps=0)
  # (Through `decompose`, its evaluation and its analyses: the language
  # model's command-line test.)
  target = engine.make_target(seq_apply, params, "W", log=False)
  training = TRAINING.replace(steps=150, batch_size=32)
  state = engine.init_state(m, target, training, sample_fn=sample)
  step = jax.jit(engine.make_train_step(
      m, m.plan(target, sample, 32, state.components), target, sample,
      training))
  key = engine.run_keys(0)[1]
  records = []
  for _ in range(150):
    state, metrics = step(state, key)
    records.append(metrics)
  # From step 50 (the adversary's sources warmed up) to the last.
  first, last = records[49], records[-1]
  for term in ("faithfulness", "stochastic", "adversarial", "loss"):
    assert last[term] < first[term], (term, first[term], last[term])
  # SPD takes the same causal-importance transformer: a step of its loss
  # moves the reconstruction down.
  spd = apd_jax.SPD(n_components=6, importance_coeff=1e-3,
                    ci_fn="transformer", ci_d_model=8, ci_heads=2,
                    ci_blocks=1)
  comps = spd.init_params(jax.random.PRNGKey(0), target, sample)
  plan = spd.plan(target, sample, 32, comps)
  x, key = sample(jax.random.PRNGKey(4), 32), jax.random.PRNGKey(5)
  loss = jax.jit(lambda p: spd.loss(p, x, target, plan, key)[1]["stochastic"])
  g = jax.grad(loss)(comps)
  assert loss(jax.tree.map(lambda p, d: p - 1e-3 * d, comps, g)) < loss(comps)
  assert spd_objective.causal_importances(comps, target, plan, x[:2], spd)[
      "['W2']"].shape == (2, 5, 6)
  # Inputs without a position axis are refused by the transformer.
  tparams, tsample = tms.init(jax.random.PRNGKey(0), n_features=5,
                              n_hidden=2), tms.sampler(
                                  n_features=5, feature_probability=0.05)
  with pytest.raises(ValueError, match="one position axis"):
    apd_jax.decompose(tms.apply, tparams, tsample, include="W",
                      method=m, training=TRAINING)


def test_the_merged_term_is_one_forward_of_either_kind(tms_target):
  """Merged with the stochastic coefficient 0 is exactly the adversarial
  term alone; at 0.5 each about half the examples are adversarial, and
  only those move their (per-example) sources (of those that move when
  all are)."""
  params, sample = tms_target
  training = TRAINING.replace(steps=1, batch_size=1024)
  target = engine.make_target(tms.apply, params, "W", log=False)
  key = engine.run_keys(0)[1]

  def one_step(**kw):
    m = method(source_scope="per_example", n_warmup=0,
               source_warmup_frac=0.0, **kw)
    state0 = engine.init_state(m, target, training, sample_fn=sample)
    plan = m.plan(target, sample, 1024, state0.components)
    step = jax.jit(engine.make_train_step(m, plan, target, sample, training))
    return state0, step(state0, key)[0]

  def moved(state0, state1):
    return np.any(np.asarray(state1.method_state["sources"].sources[
        "['W']#0"] != state0.method_state["sources"].sources["['W']#0"]),
        axis=-1)

  adversarial = dict(stochastic_coeff=0.0, adversarial_coeff=1.0)
  state0, merged = one_step(merged=True, **adversarial)
  _, apart = one_step(**adversarial)
  assert_trees_close(merged.components, apart.components, rtol=1e-5,
                     atol=1e-8)
  assert_trees_close(merged.method_state, apart.method_state, rtol=1e-5,
                     atol=1e-8)
  every = moved(state0, merged)
  half = moved(*one_step(merged=True))
  # Enough moving examples for the fraction to mean something (TMS inputs
  # are mostly zero, and those give their sources no gradient).
  assert every.sum() > 50 and not np.any(half & ~every)
  assert 0.3 < half.sum() / every.sum() < 0.7, (half.sum(), every.sum())
