"""The SPD configs hold the paper's settings and run end to end, with each
target's SPD analysis."""

import importlib.util
import json
import pathlib

import jax.numpy as jnp
import pytest

from apd_jax import SPD
from apd_jax.cli import config as cli_config
from apd_jax.cli import experiment
from apd_jax.cli import sweep_experiment
from apd_jax.core import metrics
from apd_jax.engine import export

ROOT = pathlib.Path(__file__).parents[2]


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# config: (C, β3, p, d_gate, steps, batch, lr, schedule), SPD paper §3
PAPER = {
    "spd_tms_5_2": (20, 3e-3, 1.0, 16, 40_000, 4096, 1e-3, "cosine"),
    "spd_tms_40_10": (200, 1e-4, 2.0, 16, 40_000, 4096, 1e-3, "cosine"),
    "spd_resid_mlp_1": (100, 1e-5, 2.0, 16, 30_000, 2048, 2e-3, "constant"),
    "spd_resid_mlp_2": (400, 1e-5, 2.0, 16, 50_000, 2048, 1e-3, "constant"),
    "spd_resid_mlp_3": (500, 5e-6, 2.0, 128, 100_000, 2048, 1e-3,
                        "constant"),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_configs_hold_the_paper_settings(name):
  c = load(name)
  method, training = cli_config.method_and_training(c)
  C, beta3, p, d_gate, steps, batch, lr, schedule = PAPER[name]
  assert method == SPD(n_components=C, importance_coeff=beta3,
                       importance_p=p, gate_hidden=d_gate)
  assert (training.steps, training.batch_size, training.lr,
          training.lr_schedule) == (steps, batch, lr, schedule)


def test_identity_variant_decomposes_the_hidden_layer_too():
  c = load("spd_tms_40_10", "identity")
  assert c.target.n_hidden_layers == 1 and "hidden" in c.include


def tiny(c, **target):
  with c.unlocked():
    c.steps, c.log_every, c.checkpoint_every = 20, 10, 0
    c.batch_size, c.eval_batches = 64, 1
    c.target.update(target)
  return c


@pytest.mark.long
def test_tms_identity_run_writes_the_spd_outputs(tmp_path):
  c = tiny(load("spd_tms_5_2", "identity"), steps=50)
  s = experiment.train_and_evaluate(c, str(tmp_path))
  assert {"mmcs", "ml2r", "alive", "stochastic_recon", "l0"} <= set(s)
  # W, its transpose and the identity layer: three products with gates.
  assert sorted(k for k in s if k.startswith("alive/")) == [
      "alive/['W']#0", "alive/['W']#1", "alive/['hidden'][0]"]
  for name in ("causal_importances.png", "components.png", "losses.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  assert json.loads((tmp_path / "summary.json").read_text())["alive"] == (
      s["alive"])
  # The VPD authors' check on W's two uses, from the saved run.
  result = export.load(str(tmp_path / "decomposition"))
  probes = result.scores(0.75 * jnp.eye(5))
  assert s["identity_ci_errors"] == sum(
      metrics.identity_ci_errors(probes[k]) for k in ("['W']#0", "['W']#1"))


def test_resid_mlp_run_reports_features_with_their_own_subcomponent(
    tmp_path):
  c = tiny(load("spd_resid_mlp_1"), n_features=8, d_resid=16, d_mlp=4,
           steps=50, batch_size=64)
  with c.unlocked():
    c.method.n_components = 10
  s = experiment.train_and_evaluate(c, str(tmp_path))
  assert s["n_features"] == 8
  assert 0 <= s["features_with_own_subcomponent"] <= s[
      "features_recovered"] <= 8
  for name in ("causal_importances.png", "contributions.png"):
    assert (tmp_path / name).stat().st_size > 0, name


def test_gated_run_reports_each_functions_recovery(tmp_path):
  c = tiny(load("spd_gated_functions", "quick"))
  c.figures = False            # the numbers are checked, not the figures
  s = experiment.train_and_evaluate(c, str(tmp_path))
  assert len(s["function_recovery"]) == 4
  assert all(-1.0 <= v <= 1.0 for v in s["function_recovery"])
  assert len(s["function_recovery_per_matrix"][0]) == 4   # 2 layers x 2


def test_cli_sweep_over_seeds_tabulates_spd_metrics(tmp_path):
  c = tiny(load("spd_tms_5_2"), steps=50)
  with c.unlocked():
    c.sweep.seed = (0, 1)
    c.sweep.importance_coeff = (1e-3,)
    c.figures = False
  s = sweep_experiment.train_and_evaluate(c, str(tmp_path))
  assert s["n_runs"] == 2
  table = (tmp_path / "sweep.md").read_text()
  for col in ("stochastic_recon", "alive", "mmcs"):
    assert col in table, col


def test_an_apd_option_in_an_spd_sweep_is_refused(tmp_path):
  c = tiny(load("spd_tms_5_2"), steps=50)
  with c.unlocked():
    c.sweep.topk = (0.2, 0.3)
  with pytest.raises(ValueError, match="topk"):
    sweep_experiment.train_and_evaluate(c, str(tmp_path))
