"""A third method, defined only here, runs through everything the engine
offers with no edit outside `methods/`: `decompose`, `decompose_sweep`,
save and load, `summary`, `top_inputs` and the command line's job (the
method registered from this file).

`Faithful` is a deliberately simple baseline: components trained only to
sum to the target's weights (faithfulness), scored by their norm, every
component active on every input.
"""

import dataclasses
import json
from typing import ClassVar
from typing import NamedTuple

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
from apd_jax import methods
from apd_jax.cli import config as cli_config
from apd_jax.cli import experiment
from apd_jax.cli import sweep_experiment
from apd_jax.core import components as comp_lib
from apd_jax.core import losses
from apd_jax.targets import tms


class FaithfulHypers(NamedTuple):
  faithfulness_coeff: float | jax.Array
  lr_scale: float | jax.Array = 1.0


@dataclasses.dataclass(frozen=True)
class Faithful:
  """`L = c_f ‖θ* − Σ_c U_c V_c‖² / N`; every component always active."""
  n_components: int
  rank: int = 1
  faithfulness_coeff: float = 1.0

  NAME: ClassVar[str] = "faithful"
  SWEEPABLE: ClassVar[tuple[str, ...]] = ("faithfulness_coeff",)
  WARMUP_FRAC: ClassVar[float] = 0.0
  METRICS: ClassVar[tuple[str, ...]] = ("faithfulness", "l0")
  SELECT: ClassVar[tuple[str, str]] = ("faithfulness", "min")
  SCORE: ClassVar[str] = "norm"
  SCORE_NAME: ClassVar[str] = "component norm"
  ACTIVE: ClassVar[str] = "always"
  EXTRAS: ClassVar[tuple[str, ...]] = ("norms",)
  PARAMS: ClassVar[type] = comp_lib.Components
  PLAN: ClassVar[type | None] = None
  CLI_DEFAULTS: ClassVar[dict] = dict(n_components=3)
  init_traceable: ClassVar[bool] = True

  def replace(self, **values):
    return dataclasses.replace(self, **values)

  def check(self, target, sample_fn, batch_size):
    del target, sample_fn, batch_size

  def init_params(self, key, target, sample_fn=None):
    del sample_fn
    shapes = {n: tuple(w.shape) for n, w in target.weights.items()}
    return comp_lib.init_random(key, shapes, n_components=self.n_components,
                                rank={n: self.rank for n in shapes})

  def project(self, params):
    return params

  def gradient_transform(self):
    return None

  def plan(self, target, sample_fn, batch_size, params):
    return None

  def hypers(self, **values):
    return FaithfulHypers(values.get("faithfulness_coeff",
                                     self.faithfulness_coeff))

  def bound(self, runs):
    return self

  def check_runs(self, runs, batch_size):
    del runs, batch_size

  def loss(self, params, x, target, plan, key=None, hypers=None,
           progress=None):
    c = self.faithfulness_coeff if hypers is None else (
        hypers.faithfulness_coeff)
    faith = losses.faithfulness(target.weights,
                                comp_lib.summed_from_factors(params))
    return c * faith, dict(faithfulness=faith,
                           l0=jnp.float32(self.n_components))

  def evaluate(self, result, sample_fn, key, *, batch_size, n_batches):
    faith = losses.faithfulness(
        result.target.weights,
        comp_lib.summed_from_factors(result.components))
    return dict(faithfulness=float(faith), l0=float(self.n_components))

  def groups(self, result):
    return {"": tuple(result.target.names)}

  def scores(self, result, x):
    norms = sum(jnp.linalg.norm(p.reshape(p.shape[0], -1), axis=1)
                for p in result.component_weights.values())
    return {"": jnp.broadcast_to(norms, (x.shape[0], norms.shape[0]))}

  def active(self, result, x, batch=False):
    return {"": jnp.ones((x.shape[0], self.n_components), bool)}

  def masks(self, result, x, batch=False):
    return {"": jnp.ones((x.shape[0], self.n_components))}

  def masked_apply(self, result, mask, x):
    P = result.component_weights
    return jax.vmap(lambda m, xb: result.target.forward(
        comp_lib.masked_weights(P, m), xb)[0])(mask[""], x)

  def norms(self, result, x):
    return self.scores(result, x)[""]


@pytest.fixture(scope="module")
def registered():
  methods.register(Faithful)
  yield
  methods._REGISTRY.pop("faithful")  # noqa: SLF001


@pytest.fixture(scope="module")
def tms_target():
  params, _ = tms.train(jax.random.PRNGKey(0), n_features=5, n_hidden=2,
                        steps=300)
  return params, tms.sampler(n_features=5, feature_probability=0.05)


TRAINING = apd_jax.Training(steps=300, batch_size=64, lr=3e-2,
                            progress=False, log_every=100)


def test_decompose_summary_top_inputs_save_and_load(tms_target, registered,
                                                    tmp_path):
  params, sample = tms_target
  result = apd_jax.decompose(tms.apply, params, sample, include="W",
                             method=Faithful(n_components=3, rank=2),
                             training=TRAINING)
  assert result.metrics["faithfulness"] < 1e-3
  np.testing.assert_allclose(
      sum(result.component_weights["['W']"]), params["W"], atol=0.05)
  x = sample(jax.random.PRNGKey(3), 4)
  assert result.norms(x).shape == (4, 3)          # the method's own EXTRAS
  np.testing.assert_allclose(result.apply(x), tms.apply(params, x),
                             atol=0.05)
  s = result.summary()
  assert s.method == "Faithful" and s.score == "norm"
  assert [c.frequency for c in s.components] == [1.0, 1.0, 1.0]
  assert "Faithful decomposition" in s.table()
  tops = result.top_inputs(k=2, batch_size=32, n_batches=1)
  assert len(tops) == 3 and all(len(t.inputs) == 2 for t in tops)

  apd_jax.save(result, str(tmp_path / "d"))
  meta = json.loads((tmp_path / "d" / "decomposition.json").read_text())
  assert meta["method"] == "faithful" and meta["plan"] is None
  back = apd_jax.load(str(tmp_path / "d"))
  assert back.method == result.method
  np.testing.assert_allclose(back.apply(x), result.apply(x), rtol=1e-6)


def test_sweep_of_two_runs_equals_two_runs(tms_target):
  params, sample = tms_target
  assert_seed_sweep_equals_runs(tms.apply, params, sample,
                                Faithful(n_components=3), TRAINING,
                                rtol=1e-5, atol=1e-6)


def test_building_blocks_train_it(tms_target):
  params, sample = tms_target
  method = Faithful(n_components=2)
  target = engine.make_target(tms.apply, params, "W", log=False)
  engine.check_inputs(method, target, sample, TRAINING)
  state = engine.init_state(method, target, TRAINING, sample_fn=sample)
  step = engine.make_train_step(method, None, target, sample, TRAINING)
  state, history = engine.fit(state, step, engine.run_keys(0)[1], steps=200,
                              log_every=100, progress=False)
  assert history[-1]["faithfulness"] < history[0]["faithfulness"]


def test_command_line_job_and_sweep(registered, tmp_path):
  config = cli_config.default_config("faithful")
  config.method.n_components = 2
  config.update(steps=200, log_every=100, checkpoint_every=100,
                batch_size=64, eval_batches=1, warmup_frac=0.0)
  config.target.steps = 300
  summary = experiment.train_and_evaluate(config, str(tmp_path / "one"))
  assert summary["faithfulness"] < 1e-2 and "mmcs" in summary
  assert summary["components"]["counts"]["all"]["alive"] == 2
  for name in ("summary.md", "component_norms.png", "components.png",
               "decomposition/decomposition.json"):
    assert (tmp_path / "one" / name).stat().st_size > 0, name
  assert "foo" not in config.method
  with pytest.raises(ValueError, match="its options: .*'rank'"):
    bad = config.copy_and_resolve_references()
    bad.method.topk = 0.3
    cli_config.method_and_training(bad)

  config.sweep.faithfulness_coeff = (0.5, 1.0)
  config.figures = False
  out = sweep_experiment.train_and_evaluate(config, str(tmp_path / "sweep"))
  assert out["n_runs"] == 2
  assert (tmp_path / "sweep" / "sweep.csv").read_text().count("\n") == 3


# -- a method with state of its own -------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tracked(Faithful):
  """`Faithful` with its own update and state: the number of updates `n`
  and an EMA of the faithfulness loss; each update is scaled by
  `1 / (1 + n / 10)`, so the trained factors depend on the state too."""
  NAME: ClassVar[str] = "tracked"

  def init_state(self, key, target, params, sample_fn, batch_size):
    del key, target, params, sample_fn, batch_size
    return dict(n=jnp.zeros((), jnp.int32), ema=jnp.zeros(()))

  def update(self, params, opt_state, state, x, target, plan, key, hypers,
             progress, optimizer):
    (loss, metrics), grads = jax.value_and_grad(self.loss, has_aux=True)(
        params, x, target, plan, key, hypers, progress)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    scale = 1.0 / (1.0 + state["n"] / 10)
    if hypers is not None:
      scale = scale * hypers.lr_scale
    params = jax.tree.map(lambda p, u: p + scale * u, params, updates)
    state = dict(n=state["n"] + 1,
                 ema=0.9 * state["ema"] + 0.1 * metrics["faithfulness"])
    return params, opt_state, state, dict(loss=loss, **metrics)


def test_a_methods_own_state_is_updated_checkpointed_and_swept(
    tms_target, tmp_path):
  params, sample = tms_target
  method = Tracked(n_components=2)
  target = engine.make_target(tms.apply, params, "W", log=False)
  state0 = engine.init_state(method, target, TRAINING, sample_fn=sample)
  key = engine.run_keys(0)[1]
  step = jax.jit(engine.make_train_step(method, None, target, sample,
                                        TRAINING))
  state, ema = state0, 0.0
  for _ in range(6):
    state, metrics = step(state, key)
    ema = 0.9 * ema + 0.1 * float(metrics["faithfulness"])
  assert int(state.method_state["n"]) == 6 == int(state.step)
  np.testing.assert_allclose(state.method_state["ema"], ema, rtol=1e-5)

  # Stopped at step 4 and resumed from the checkpoint: the run that was
  # not interrupted, its state included.
  step = engine.make_train_step(method, None, target, sample, TRAINING)
  whole, back, history, resumed = run_stopped_and_resumed(
      state0, step, key, tmp_path / "c")
  assert int(back.method_state["n"]) == 4 and len(history) == 2
  assert_trees_close(resumed, whole, rtol=1e-6)

  # A sweep of two seeds: each run's factors as its own run gives them.
  assert_seed_sweep_equals_runs(
      tms.apply, params, sample, method,
      TRAINING.replace(steps=40, log_every=20), rtol=1e-5, atol=1e-6)


def test_a_method_without_state_keeps_the_old_layout():
  """Its `TrainState` has the three children checkpoints always had."""
  state = engine.TrainState.create({"U": jnp.ones(2)}, optax.sgd(0.1))
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(state)[0]]
  assert paths == [".step", ".components['U']"]   # sgd keeps no state
  with_state = state.replace(method_state={"s": jnp.zeros(3)})
  assert len(jax.tree.leaves(with_state)) == 3
