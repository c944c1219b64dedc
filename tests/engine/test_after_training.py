"""An error after training loses nothing trained: in `decompose` and on
the command line."""

import json
import logging

import jax
import numpy as np
import pytest

from apd_jax import APD
from apd_jax import Training
from apd_jax import decompose
from apd_jax.cli import experiment
from apd_jax.engine import export
from apd_jax.targets import tms
from configs import tms_5_2


def broken_evaluate(self, *args, **kwargs):
  raise FloatingPointError("the evaluation broke")


def test_decompose_keeps_the_decomposition_when_its_evaluation_fails(
    monkeypatch, caplog):
  caplog.set_level(logging.ERROR, logger="absl")
  monkeypatch.setattr(APD, "evaluate", broken_evaluate)
  params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
  method = APD(n_components=5, topk=1.0)
  result = decompose(tms.apply, params, tms.sampler(
      n_features=5, feature_probability=0.05), include="W", method=method,
      training=Training(steps=20, batch_size=64, lr=1e-2, log_every=10,
                        progress=False))
  assert result.metrics["evaluation_error"] == (
      "FloatingPointError: the evaluation broke")
  assert result.metrics["steps"] == 20
  assert [r["step"] for r in result.history] == [10, 20]
  assert "evaluation_error='FloatingPointError" in repr(result)
  first = method.init_params(jax.random.PRNGKey(0), result.target)
  assert not np.allclose(result.components.U["['W']"], first.U["['W']"])
  (record,) = [r for r in caplog.records
               if "final evaluation failed" in r.getMessage()]
  assert record.exc_info and record.exc_info[0] is FloatingPointError


def tiny_config():
  c = tms_5_2.get_config()
  c.update(steps=20, log_every=10, checkpoint_every=10, eval_batches=1,
           batch_size=256, lr_schedule="constant", warmup_frac=0.0)
  c.target.steps = 50
  return c


def test_the_command_line_saves_before_it_evaluates(monkeypatch, tmp_path):
  """The evaluation fails: the run stops with an error that says where the
  decomposition is, saved there with its history; started again in the
  workdir it evaluates the final checkpoint without training. A report
  that fails afterwards leaves the decomposition saved too."""
  workdir = str(tmp_path)
  with monkeypatch.context() as m:
    m.setattr(APD, "evaluate", broken_evaluate)
    with pytest.raises(RuntimeError, match="evaluation failed after "
                       "training .*FloatingPointError.*saved in .*"
                       "decomposition"):
      experiment.train_and_evaluate(tiny_config(), workdir)
  saved = export.load(str(tmp_path / "decomposition"))
  assert [r["step"] for r in saved.history] == [10, 20]
  assert "evaluation_error" in saved.metrics
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["evaluation_error"].startswith("FloatingPointError")

  def broken_report(*args, **kwargs):
    raise OSError("the disk is full")

  monkeypatch.setattr(experiment, "describe_components", broken_report)
  with pytest.raises(OSError, match="the disk is full"):
    experiment.train_and_evaluate(tiny_config(), workdir)
  again = export.load(str(tmp_path / "decomposition"))
  assert [r["step"] for r in again.history] == [10, 20]   # no new steps
  assert "evaluation_error" not in again.metrics
  assert np.isfinite(again.metrics["topk_recon"])
  for name, u in saved.components.U.items():
    np.testing.assert_array_equal(again.components.U[name], u)
