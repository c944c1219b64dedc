"""`train_and_evaluate` on tiny residual-MLP and gated-function runs."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from apd_jax.cli import experiment

ROOT = pathlib.Path(__file__).parents[2]


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.long
def test_residual_mlp_run_writes_its_analyses(tmp_path):
  c = load_config("resid_mlp_2.py", "rank1,quick")
  c.target.update(n_features=8, d_resid=32, d_mlp=6, steps=100,
                  batch_size=256, feature_probability=0.1)
  c.update(n_components=12, steps=30, batch_size=128, log_every=15,
           eval_batches=1)
  summary = experiment.train_and_evaluate(c, str(tmp_path))
  assert summary["n_features"] == 8
  assert 0 <= summary["features_recovered"] <= 8
  for k in ("target", "topk", "scrubbed", "anti_scrubbed", "monosemantic"):
    assert np.isfinite(summary[f"loss_{k}"]), k
  assert (json.loads((tmp_path / "summary.json").read_text())
          == json.loads(json.dumps(summary)))
  for name in ("contributions.png", "scrubbing.png", "losses.png",
               "analysis.npz", "components.npz"):
    assert (tmp_path / name).stat().st_size > 0, name
  saved = np.load(tmp_path / "analysis.npz")
  assert saved["kappa"].shape == (8, 6)
  assert int((saved["cosine"] >= 0.9).sum()) == summary["features_recovered"]


def test_gated_run_scores_each_function(tmp_path):
  c = load_config("gated_functions.py", "quick")
  c.update(steps=20, batch_size=256, log_every=10, eval_batches=1)
  summary = experiment.train_and_evaluate(c, str(tmp_path))
  assert len(summary["function_recovery"]) == 4
  assert all(-1.0 <= v <= 1.0 + 1e-6 for v in summary["function_recovery"])
  assert np.isclose(summary["mean_function_recovery"],
                    np.mean(summary["function_recovery"]))
  assert (tmp_path / "components.png").stat().st_size > 0
