"""The public `decompose` contract: validation, results, reproducibility."""

import dataclasses
import functools
import logging
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import apd_jax
from apd_jax import APD
from apd_jax import Training
from apd_jax import decompose
from apd_jax.targets import tms
from apd_jax.training import train

README = pathlib.Path(__file__).parents[2] / "docs" / "your_model.md"


APD_FIELDS = {f.name for f in dataclasses.fields(APD)}


def tiny(include="W", **kw):
  """A 20-step TMS run; `kw` go to the `APD` or the `Training` object."""
  params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
  m = dict(n_components=5, topk=1.0)
  t = dict(steps=20, batch_size=64, lr=1e-2, log_every=10, eval_batches=2)
  for k, v in kw.items():
    (m if k in APD_FIELDS else t)[k] = v
  return decompose(tms.apply, params, tms.sampler(
      n_features=5, feature_probability=0.05), include=include,
      method=APD(**m), training=Training(**t))


@pytest.mark.parametrize("kw,message", [
    (dict(include="nope"), "matches no leaf"),
    (dict(include="b_final"), "2 or more axes"),
    (dict(topk=6.0), "larger than n_components"),
    (dict(topk=2.5, batch_topk=False), "integer topk"),
    (dict(topk=0.001), "int\\(topk\\*batch_size\\) = 0"),
    (dict(steps=0), "steps must be positive"),
    (dict(batch_size=-1), "batch_size must be positive"),
    (dict(n_components=0), "n_components must be positive"),
    (dict(lr=0.0), "lr must be positive"),
    (dict(rank=0), "rank must be positive"),
    (dict(schatten_p=0.0), "schatten_p must be positive"),
    (dict(attribution_type="magic"), "attribution_type must be one of"),
    (dict(init="zeros"), "init must be one of"),
    (dict(lr_schedule="linear"), "lr_schedule must be one of"),
    (dict(warmup_frac=1.0), "warmup_frac must be in"),
    (dict(checkpoint_every=15), "multiple of log_every=10"),
    (dict(attribution_type="activation"), "decomposed leaf's input"),
    (dict(hidden_act_coeff=1.0), "needs has_aux=True"),
    (dict(attribution_projections=-1), "non-negative integer"),
    (dict(attribution_projections=4, attribution_mode="forward"),
     "attribution_mode 'auto' or 'reverse'"),
    (dict(attribution_projections=4, factored=False), "factored form"),
])
def test_bad_input_raises_before_compiling(monkeypatch, kw, message):
  def never(*a, **k):
    raise AssertionError("compiled a step despite bad input")
  monkeypatch.setattr(train, "make_train_step", never)
  with pytest.raises(ValueError, match=message):
    tiny(**kw)


def test_sample_fn_rejected_by_apply_fn(monkeypatch):
  params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
  wrong = lambda key, n: jax.random.uniform(key, (n, 7))  # noqa: E731  7 != 5
  with pytest.raises(ValueError, match="apply_fn\\(params, x\\) failed"):
    decompose(tms.apply, params, wrong, include="W",
              method=APD(n_components=5, topk=1.0),
              training=Training(steps=10))


def test_failing_sample_fn_is_named():
  params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)

  def broken(key, n):
    raise RuntimeError("boom")

  with pytest.raises(ValueError, match="sample_fn\\(key, 64\\) failed.*boom"):
    decompose(tms.apply, params, broken, include="W",
              method=APD(n_components=5, topk=1.0),
              training=Training(steps=10, batch_size=64))


def test_result_exposes_the_contract():
  r = tiny()
  P = r.component_weights
  assert list(P) == ["['W']"] and P["['W']"].shape == (5, 2, 5)
  x = tms.sample(jax.random.PRNGKey(3), 16, n_features=5,
                 feature_probability=0.5)
  assert r.attributions(x).shape == (16, 5)
  mask = r.topk_mask(x, batch=True)      # training's: int(topk · B) kept
  assert mask.shape == (16, 5) and int(mask.sum()) == 16
  np.testing.assert_allclose(r.apply(x), r.apply(x, jnp.ones((16, 5))),
                             rtol=1e-5, atol=1e-6)
  for key in ("faithfulness", "topk_recon", "l0", "dead_components",
              "steps", "wall_seconds"):
    assert key in r.metrics
  assert len(r.history) == 2 and r.history[-1]["step"] == 20


def test_topk_mask_is_per_example_unless_asked_for_the_batch():
  """Each example's mask is its own (`A² ≥ τ`, τ calibrated on the
  evaluation batches): a copy gets the same mask, zero rows beside an
  example change nothing, one example alone works; on a large batch of the
  training distribution it keeps about what batch top-k keeps (of the
  entries with a nonzero attribution: batch top-k fills its `int(topk·B)`
  with zeros on empty inputs, where a component changes nothing)."""
  r = tiny(steps=200, topk=1.0, batch_size=1024, eval_batches=4)
  e3 = jnp.eye(5)[3]
  one = r.topk_mask(e3[None])
  assert one.shape == (1, 5)
  twice = r.topk_mask(jnp.stack([e3, e3]))
  np.testing.assert_array_equal(twice[0], twice[1])
  padded = r.topk_mask(jnp.concatenate([e3[None], jnp.zeros((99, 5))]))
  np.testing.assert_array_equal(padded[0], one[0])
  assert float(padded[1:].sum()) == 0.0      # nothing active on no input
  # The batch mask depends on the rest of the batch; this one does not.
  assert float(r.topk_mask(jnp.stack([e3, e3]), batch=True).sum()) == 2.0
  x = tms.sample(jax.random.PRNGKey(7), 4096, n_features=5,
                 feature_probability=0.05)
  batch = r.topk_mask(x, batch=True) * (r.attributions(x) > 0)
  assert abs(float(r.topk_mask(x).mean() / batch.mean()) - 1.0) < 0.1
  assert {g: a.shape for g, a in r.active(x).items()} == {"": (4096, 5)}
  assert r.metrics["topk_threshold"] > 0


def test_same_seed_same_result_other_seed_differs():
  a, b, c = tiny(seed=1), tiny(seed=1), tiny(seed=2)
  np.testing.assert_array_equal(a.components.U["['W']"],
                                b.components.U["['W']"])
  assert not np.allclose(a.components.U["['W']"], c.components.U["['W']"])


def test_unit_norm_matrices_keeps_u_columns_unit():
  r = tiny(unit_norm_matrices=True, lr_schedule="cosine", warmup_frac=0.1)
  np.testing.assert_allclose(
      jnp.linalg.norm(r.components.U["['W']"], axis=1), 1.0, rtol=1e-5)


def test_svd_init_starts_faithful():
  r = tiny(init="svd", steps=1, log_every=1, rank=1)
  assert r.history[0]["faithfulness"] < 1e-10


def test_flax_linen_model_decomposes():
  import flax.linen as nn  # noqa: PLC0415

  model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
  sample = lambda k, n: jax.random.normal(k, (n, 4))  # noqa: E731
  r = decompose(model.apply, params, sample, include="kernel",
                method=APD(n_components=6, topk=2.0, recon="kl"),
                training=Training(steps=20, batch_size=32, log_every=10,
                                  eval_batches=1))
  assert set(r.component_weights) == {
      "['params']['layers_0']['kernel']", "['params']['layers_2']['kernel']"}


def test_readme_snippets_run(capsys, tmp_path, monkeypatch):
  """The quick example (at most 15 lines), the loop of one's own, and the
  analysis of what each component does."""
  text = README.read_text()
  snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  assert len(snippet.strip().splitlines()) <= 15
  scope = {}
  exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102
  assert scope["result"].metrics["faithfulness"] < 1e-3
  loop = re.search(r"A loop of your own.*?```python\n(.*?)```", text,
                   re.S).group(1)
  capsys.readouterr()
  exec(compile(loop, "README.md", "exec"), scope)  # noqa: S102
  printed = capsys.readouterr().out
  assert "'faithfulness'" in printed and "'topk_recon'" in printed
  assert int(scope["state"].step) == 200
  analysis = re.search(r"## What each component does.*?```python\n(.*?)```",
                       text, re.S).group(1)
  monkeypatch.chdir(tmp_path)
  exec(compile(analysis, "README.md", "exec"), scope)  # noqa: S102
  printed = capsys.readouterr().out
  assert "APD decomposition on 4096 fresh examples" in printed
  assert len(scope["tops"]) == 5 and scope["summary"].counts()["all"] == dict(
      total=5, alive=5, dead=0, always_on=0)
  # Knocking out the component costs more than the top-k pass alone.
  r, x = scope["result"], scope["x"]
  y = r.target.batch(x)[0]
  knocked = float(((r.apply(x, scope["mask"]) - y) ** 2).mean())
  assert knocked > 2 * float(((r.apply(x, r.topk_mask(x)) - y) ** 2).mean())
  assert (tmp_path / "summary.png").exists()
  assert (tmp_path / "top_inputs.png").exists()


def mlp_with_inputs(params, x):
  """A 2-layer MLP returning each weight's input as an activation."""
  h = jax.nn.relu(x @ params["w1"])
  return h @ params["w2"], {"['w1']": x, "['w2']": h}


@pytest.mark.parametrize("kw", [
    dict(attribution_type="ablation"),
    dict(attribution_type="activation"),
    dict(attribution_mode="reverse", attribution_point="components"),
    dict(sparsity="lp", lp_p=0.9),
    dict(batch_topk=False, topk=2),
    dict(hidden_act_coeff=1.0, hidden_acts="w2"),
])
def test_every_option_trains_end_to_end(kw):
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {"w1": jax.random.normal(k1, (4, 6)),
            "w2": jax.random.normal(k2, (6, 3))}
  sample = lambda k, n: jax.random.normal(k, (n, 4))  # noqa: E731
  method = APD(**{**dict(n_components=4, topk=1.5), **kw})
  r = decompose(mlp_with_inputs, params, sample, include="w", has_aux=True,
                method=method, training=Training(
                    steps=40, batch_size=32, lr=1e-2, log_every=20,
                    eval_batches=1))
  first, last = r.history[0], r.history[-1]
  assert np.isfinite(last["loss"]) and last["loss"] < first["loss"]


def test_keyword_shortcut_is_training_and_nothing_else():
  """`decompose(..., method=m, steps=20)` is the run with
  `training=Training(steps=20)`; keywords beside `training=`, a method's
  field as a keyword, an unknown keyword and no method are refused."""
  params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
  sample = tms.sampler(n_features=5, feature_probability=0.05)
  method = APD(n_components=5, topk=1.0)
  a = decompose(tms.apply, params, sample, include="W", method=method,
                steps=20, batch_size=64, log_every=10, eval_batches=1)
  b = decompose(tms.apply, params, sample, include="W", method=method,
                training=Training(steps=20, batch_size=64, log_every=10,
                                  eval_batches=1))
  np.testing.assert_array_equal(a.components.U["['W']"],
                                b.components.U["['W']"])
  run = functools.partial(decompose, tms.apply, params, sample, include="W")
  with pytest.raises(ValueError, match="beside training="):
    run(method=method, training=Training(steps=5), steps=50)
  with pytest.raises(ValueError, match="topk .a field of APD"):
    run(method=method, topk=0.5)
  with pytest.raises(ValueError, match="unknown options \\['topk_typo'\\]"):
    run(method=method, topk_typo=1.0)
  with pytest.raises(ValueError, match="give method="):
    run(steps=20)


def test_progress_and_matched_leaves_are_shown_unless_quiet(capsys):
  tiny()
  err = capsys.readouterr().err
  assert "include='W' matched 1 leaves: ['W'] (2, 5)" in err
  assert re.search(r"step 20/20  loss \S+ .* steps/s  ETA \d+s", err)
  tiny(progress=False)
  assert capsys.readouterr().err == ""


def test_numpy_sample_fn_is_rejected():
  params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
  batch = np.random.default_rng(0).random((64, 5)).astype(np.float32)
  with pytest.raises(ValueError, match="same batch whatever the key"):
    decompose(tms.apply, params, lambda key, n: batch[:n], include="W",
              method=APD(n_components=5, topk=1.0),
              training=Training(steps=10, batch_size=64))


def inputs(params=None, **method):
  """`check_inputs` on TMS 5-2 (`params`: its initial ones)."""
  params = params or tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
  target = apd_jax.engine.make_target(tms.apply, params, "W", log=False)
  apd_jax.engine.check_inputs(
      APD(**{"n_components": 5, "topk": 1.0, **method}), target,
      tms.sampler(n_features=5, feature_probability=0.05),
      Training(batch_size=64))


def test_rank_above_min_dim_is_a_note_not_a_warning(caplog):
  """The paper's TMS 5-2 rank, min(i, o) + 1 = 3, is chosen on purpose: an
  INFO line, no warning."""
  caplog.set_level(logging.INFO, logger="absl")
  inputs(rank=3)
  (note,) = [r for r in caplog.records if "exceeds min" in r.getMessage()]
  assert "rank=3 exceeds min(i, o)=2 of ['W'] (2, 5)" in note.getMessage()
  assert note.levelno == logging.INFO
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("leaf,value,named", [
    ("W", np.nan, "['W'] (2, 5): 1 nan, 0 inf of 10"),
    ("b_final", -np.inf, "['b_final'] (5,): 0 nan, 1 inf of 5")])
def test_non_finite_params_are_refused_naming_the_leaf(monkeypatch, leaf,
                                                        value, named):
  """A decomposed leaf or any other floating leaf: refused before anything
  is compiled, the leaf and its count named."""
  params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
  params[leaf] = params[leaf].reshape(-1).at[3].set(value).reshape(
      params[leaf].shape)
  with pytest.raises(ValueError, match="non-finite") as e:
    inputs(params)
  assert named in str(e.value)
  def never(*a, **k):
    raise AssertionError("compiled a step despite non-finite params")
  monkeypatch.setattr(train, "make_train_step", never)
  with pytest.raises(ValueError, match=re.escape(named)):
    decompose(tms.apply, params, tms.sampler(
        n_features=5, feature_probability=0.05), include="W",
        method=APD(n_components=5, topk=1.0),
        training=Training(steps=10, batch_size=64, progress=False))


def test_linen_params_subtree_is_named():
  import flax.linen as nn  # noqa: PLC0415

  model = nn.Dense(3)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
  sample = lambda k, n: jax.random.normal(k, (n, 4))  # noqa: E731
  with pytest.raises(ValueError, match="whole `variables` dict"):
    decompose(model.apply, variables["params"], sample, include="kernel",
              method=APD(n_components=2, topk=1.0),
              training=Training(steps=10, batch_size=8))


def test_objects_are_frozen_and_hashable():
  m = APD(n_components=5, topk=0.211)
  assert hash(m) == hash(APD(n_components=5, topk=0.211))
  with pytest.raises(dataclasses.FrozenInstanceError):
    m.topk = 0.3
  assert m.replace(topk=0.3).topk == 0.3
  with pytest.raises(ValueError, match="topk must be positive"):
    m.replace(topk=0.0)


def test_own_loop_from_the_building_blocks():
  """The building blocks make a loop of ten lines whose run is
  `decompose`'s."""
  params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
  sample = tms.sampler(n_features=5, feature_probability=0.05)
  method = APD(n_components=5, topk=1.0)
  training = Training(steps=20, batch_size=64, log_every=20, eval_batches=1,
                      progress=False)
  target = apd_jax.engine.make_target(tms.apply, params, "W", log=False)
  state = apd_jax.engine.init_state(method, target, training)
  plan = method.plan(target, sample, training.batch_size, state.components)
  step = jax.jit(apd_jax.engine.make_train_step(method, plan, target,
                                                sample, training))
  data_key = apd_jax.engine.run_keys(training.seed)[1]
  for _ in range(training.steps):
    state, _ = step(state, data_key)
  want = decompose(tms.apply, params, sample, include="W", method=method,
                   training=training)
  np.testing.assert_allclose(state.components.U["['W']"],
                             want.components.U["['W']"], rtol=1e-5,
                             atol=1e-6)
  result = apd_jax.Decomposition(target, method, plan, state.components, {},
                                 [])
  metrics = apd_jax.engine.evaluate(result, sample, jax.random.PRNGKey(1),
                                    batch_size=64, n_batches=1)
  assert set(metrics) >= {"faithfulness", "topk_recon", "l0"}


@pytest.mark.parametrize("method,warmup,first_step_moves", [
    (APD(n_components=2, topk=1.0), None, False),   # APD's 5% warm-up
    (APD(n_components=2, topk=1.0), 0.0, True),
    (apd_jax.SPD(n_components=2, importance_coeff=1.0), None, True)])
def test_warmup_defaults_to_the_methods(method, warmup, first_step_moves):
  """The first update is 0 under a warm-up from lr 0, the full Adam step
  (lr · sign) without one."""
  training = Training(steps=100, lr=0.1, warmup_frac=warmup)
  opt = apd_jax.engine.api.optimizer(method, training)
  g = {"w": jnp.array([0.5, -2.0])}
  updates, _ = opt.update(g, opt.init(g), g)
  want = [-0.1, 0.1] if first_step_moves else [0.0, 0.0]
  np.testing.assert_allclose(updates["w"], want, rtol=1e-4)
