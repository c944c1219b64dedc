"""A sweep trains its runs in one program, and each run is the run that
`decompose` gives for the same values."""

import chex
import jax
import numpy as np
import pytest

from apd_jax import APD
from apd_jax import Training
from apd_jax import decompose
from apd_jax.engine import sweep
from apd_jax.targets import tms


@pytest.fixture(scope="module")
def tms_target():
  params, _ = tms.train(jax.random.PRNGKey(0), n_features=5, n_hidden=2,
                        steps=500)
  return params, tms.sampler(n_features=5, feature_probability=0.05)


METHOD = APD(n_components=5, topk=0.211, rank=3, simplicity_coeff=0.7,
             attribution_point="components")
TRAINING = Training(steps=60, batch_size=256, lr=0.03, warmup_frac=0.05,
                    log_every=30, eval_batches=2, progress=False)
BASE = dict(include="W", method=METHOD, training=TRAINING)


def alone(params, sample_fn, run, training=TRAINING):
  """The single run with `run`'s values, as `decompose` trains it."""
  t = {k: v for k, v in run.items() if k in Training.SWEEPABLE}
  m = {k: v for k, v in run.items() if k not in Training.SWEEPABLE}
  return decompose(tms.apply, params, sample_fn, include="W",
                   method=METHOD.replace(**m), training=training.replace(**t))


def test_grid_is_every_combination_last_name_fastest():
  names = sweep.sweepable(METHOD)
  runs = sweep.grid({"topk": (0.2, 0.3), "seed": (0, 1), "lr": ()}, names)
  assert runs == [dict(seed=0, topk=0.2), dict(seed=0, topk=0.3),
                  dict(seed=1, topk=0.2), dict(seed=1, topk=0.3)]
  assert sweep.grid({}, names) == [{}]           # nothing swept: one run
  with pytest.raises(ValueError, match="cannot sweep \\['rank'\\]"):
    sweep.grid({"rank": (1, 2)}, names)


def test_sweep_runs_equal_separate_runs(tms_target):
  params, sample_fn = tms_target
  # Every numeric hyperparameter differs from BASE in every run.
  grid = dict(seed=(0, 1), topk=(0.211, 0.5), faithfulness_coeff=(0.5,),
              minimality_coeff=(2.0,), simplicity_coeff=(0.3,),
              schatten_p=(0.9,), lr=(0.01,))
  result = sweep.decompose_sweep(tms.apply, params, sample_fn, sweep=grid,
                                 **BASE)
  assert len(result.runs) == 4
  assert repr(result).startswith(
      "SweepResult(APD, 4 runs over {seed: 2 values, lr: 1 value, "
      "topk: 2 values, faithfulness_coeff: 1 value,")
  assert len(repr(result)) < 400 and len(repr(result.decompositions[0])) < 400
  for run, got in zip(result.runs, result.decompositions, strict=True):
    want = alone(params, sample_fn, run)
    chex.assert_trees_all_close(got.components, want.components, atol=1e-5,
                                rtol=1e-5)
    for key in ("faithfulness", "topk_recon", "l0", "dead_components"):
      np.testing.assert_allclose(got.metrics[key], want.metrics[key],
                                 rtol=1e-4, atol=1e-9)
    assert [r["step"] for r in got.history] == [30, 60]
    np.testing.assert_allclose(
        [r["loss"] for r in got.history], [r["loss"] for r in want.history],
        rtol=1e-4)


def test_runs_with_their_own_targets_equal_separate_runs(tms_target):
  params, sample_fn = tms_target
  other, _ = tms.train(jax.random.PRNGKey(1), n_features=5, n_hidden=2,
                       steps=500)
  own = {0: params, 1: other}
  result = sweep.decompose_sweep(
      tms.apply, params, sample_fn, sweep=dict(seed=(0, 1)),
      params_for_run=lambda run: own[run["seed"]], **BASE)
  for run, got in zip(result.runs, result.decompositions, strict=True):
    target = own[run["seed"]]
    chex.assert_trees_all_close(got.target.params, target)
    want = alone(target, sample_fn, run)
    chex.assert_trees_all_close(got.components, want.components, atol=1e-5,
                                rtol=1e-5)
    np.testing.assert_allclose(got.metrics["faithfulness"],
                               want.metrics["faithfulness"], rtol=1e-4)
  # The two targets differ, so the same seed on the other target differs.
  swapped = alone(other, sample_fn, dict(seed=0))
  assert not np.allclose(swapped.components.U["['W']"],
                         result.decompositions[0].components.U["['W']"],
                         atol=1e-3)
  with pytest.raises(ValueError, match="params unlike"):
    sweep.decompose_sweep(
        tms.apply, params, sample_fn, sweep=dict(seed=(0,)),
        params_for_run=lambda run: {**params, "W": params["W"][:, :4]},
        **BASE)


def test_best_skips_non_finite_and_follows_mode(tms_target):
  params, sample_fn = tms_target
  result = sweep.decompose_sweep(
      tms.apply, params, sample_fn, sweep=dict(topk=(0.211, 1.0)),
      include="W", method=METHOD, training=TRAINING.replace(steps=30))
  recon = [m["topk_recon"] for m in result.metrics]
  assert result.best("topk_recon") == int(np.argmin(recon))
  assert result.best("topk_recon", "max") == int(np.argmax(recon))
  result.metrics[result.best("topk_recon")]["topk_recon"] = float("nan")
  assert result.best("topk_recon") == int(np.argmax(recon))


def test_bad_sweep_values_rejected(tms_target):
  params, sample_fn = tms_target
  with pytest.raises(ValueError, match="larger than n_components"):
    sweep.decompose_sweep(tms.apply, params, sample_fn,
                          sweep=dict(topk=(0.211, 6.0)), **BASE)
  with pytest.raises(ValueError, match="lr must be positive"):
    sweep.decompose_sweep(tms.apply, params, sample_fn,
                          sweep=dict(lr=(0.0,)), **BASE)
  with pytest.raises(ValueError, match="unknown options \\['topk_typo'\\]"):
    sweep.decompose_sweep(tms.apply, params, sample_fn, sweep={},
                          **BASE, topk_typo=1)


def test_a_diverging_run_leaves_the_others_alone(tms_target):
  params, sample_fn = tms_target
  training = TRAINING.replace(steps=30, warmup_frac=0.0)
  result = sweep.decompose_sweep(tms.apply, params, sample_fn, include="W",
                                 method=METHOD, training=training,
                                 sweep=dict(lr=(0.01, 1e30)))
  assert [m["finite"] for m in result.metrics] == [True, False]
  assert not np.isfinite(result.decompositions[1].history[-1]["loss"])
  want = alone(params, sample_fn, dict(lr=0.01), training)
  np.testing.assert_allclose(result.metrics[0]["topk_recon"],
                             want.metrics["topk_recon"], rtol=1e-4)
  assert result.best("topk_recon") == 0
