"""The scoreboard: its criteria and separation on hand-made runs, and
`scripts/scoreboard.py --quick` end to end."""

import csv
import dataclasses
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import flax.serialization
import numpy as np
import pytest

from apd_jax.cli import scoreboard
from apd_jax.core import metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = str(ROOT / "configs")


def test_auc_counts_pairs_and_ties():
  # Pairs (f, s): (3, 1) win, (3, 3) tie, (2, 1) win, (2, 3) loss.
  assert scoreboard.auc([3.0, 2.0], [1.0, 3.0]) == pytest.approx(2.5 / 4)
  assert scoreboard.auc([], [1.0]) is None


def _fake_runs(workdir, summaries):
  for i, s in enumerate(summaries):
    d = workdir / "runs" / f"run_{i:03d}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(s))
  return dict(n_runs=len(summaries), train_seconds=12.0, run_steps_per_s=5.0)


def _finished(workdir, config, sweep):
  """What a finished sweep leaves besides its runs: sweep.json and the
  config (so that it is read back)."""
  (pathlib.Path(workdir) / "sweep.json").write_text(json.dumps(sweep))
  (pathlib.Path(workdir) / "config.json").write_text(
      config.to_json_best_effort())
  return sweep


def _parts(workdir, sweep):
  return [(sweep, scoreboard.read_runs(str(workdir), sweep))]


def test_tms_rule_and_diagnostics_split_by_success(tmp_path):
  runs = [dict(mmcs=0.9995, ml2r=1.0, faithfulness=1e-6, l0=1.0, steps=9,
               diagnostics=dict(inputs_per_component=1.0, dead=0.0)),
          dict(mmcs=0.9995, ml2r=0.95, faithfulness=3e-6, l0=1.0, steps=9,
               diagnostics=dict(inputs_per_component=1.1, dead=0.0)),
          dict(mmcs=0.95, ml2r=1.0, faithfulness=2e-6, l0=2.0, steps=9,
               diagnostics=dict(inputs_per_component=2.0, dead=1.0))]
  sweep = _fake_runs(tmp_path, runs)
  row = scoreboard.score_entry(scoreboard.BY_NAME["spd_tms_5_2"],
                               _parts(tmp_path, sweep))
  # Only the first has both MMCS >= 0.999 and ML2R in [0.98, 1.04].
  assert [r["success"] for r in row["per_seed"]] == [True, False, False]
  assert (row["succeeded"], row["strict"]) == (1, 1)
  # APD's rule (MMCS >= 0.99, ML2R >= 0.8) passes the shrunk second too.
  apd = scoreboard.score_entry(scoreboard.BY_NAME["tms_5_2"],
                               _parts(tmp_path, sweep))
  assert [r["success"] for r in apd["per_seed"]] == [True, True, False]
  assert (apd["succeeded"], apd["strict"]) == (2, 1)
  assert row["faithfulness"] == pytest.approx(2e-6)
  assert row["faithfulness_sd"] == pytest.approx((2 / 3) ** 0.5 * 1e-6)
  assert row["inputs_per_component_failed"] == pytest.approx(1.55)
  assert row["inputs_per_component_succeeded"] == pytest.approx(1.0)
  assert row["inputs_per_component_auc"] == 1.0
  assert row["dead_auc"] == 0.75          # (1 > 0) win, (0 = 0) tie
  assert "ci_check" not in row
  assert (row["method"], apd["method"]) == ("spd", "apd")
  sep = scoreboard.pooled_separation([row, row])
  assert sep["spd"]["inputs_per_component"] == 1.0
  assert sep["spd"]["coactivation"] is None
  # Pooled per method: APD's runs are not scored against SPD's.
  apd["diagnostics"] = [dict(inputs_per_component=9.0)] * 3
  sep = scoreboard.pooled_separation([row, apd])
  assert sep["spd"]["inputs_per_component"] == 1.0
  assert sep["apd"]["inputs_per_component"] == 0.5     # all tied


def test_the_ci_check_counts_runs_without_identity_ci_errors(tmp_path):
  runs = [dict(mmcs=0.9995, ml2r=0.8, faithfulness=1e-6, l0=1.0, steps=9,
               identity_ci_errors=e, diagnostics={}) for e in (0, 3, 0)]
  row = scoreboard.score_entry(scoreboard.BY_NAME["vpd_tms_5_2"],
                               _parts(tmp_path, _fake_runs(tmp_path, runs)))
  assert (row["succeeded"], row["ci_check"]) == (0, 2)
  assert [r["identity_ci_errors"] for r in row["per_seed"]] == [0, 3, 0]
  scoreboard.write(str(tmp_path), [row], dict(
      quick=False, date="today", devices="cpu", jax="0"))
  md = (tmp_path / "scoreboard.md").read_text()
  assert "| 0 of 3 | " in md and "| 2 of 3 | " in md


def test_a_run_without_summary_counts_as_failed(tmp_path):
  """A run whose loss became non-finite writes no summary.json."""
  runs = [dict(mmcs=0.9995, ml2r=1.0, faithfulness=1e-6, l0=1.0, steps=9,
               diagnostics=dict(inputs_per_component=1.0))]
  sweep = _fake_runs(tmp_path, runs)
  sweep["n_runs"] = 2
  row = scoreboard.score_entry(scoreboard.BY_NAME["spd_tms_5_2"],
                               _parts(tmp_path, sweep))
  assert (row["succeeded"], row["seeds"], row["non_finite"]) == (1, 2, 1)
  assert row["strict"] == 1 and row["steps"] == 9
  assert math.isnan(row["mmcs"])             # one seed has no MMCS
  assert row["inputs_per_component_succeeded"] == 1.0
  assert row["inputs_per_component_auc"] is None


def test_gated_rule_needs_every_function():
  e = scoreboard.BY_NAME["spd_gated_functions"]
  assert e.success(dict(function_recovery=[0.95, 0.91, 0.99, 0.9]))
  assert not e.success(dict(function_recovery=[0.95, 0.89, 0.99, 0.99]))


def test_unknown_entry_is_refused(tmp_path):
  with pytest.raises(ValueError, match="unknown scoreboard entries"):
    scoreboard.run(str(tmp_path), CONFIGS, ["tms_5_3"], 2, True)


@pytest.mark.long
def test_quick_script_writes_the_tables_and_reads_them_back(tmp_path,
                                                           monkeypatch):
  names = ["tms_5_2", "spd_tms_5_2", "vpd_tms_5_2:identity"]
  run = subprocess.run(
      [sys.executable, "scripts/scoreboard.py", f"--workdir={tmp_path}",
       "--quick", "--seeds=2", "--nofigures", "--only=" + ",".join(names)],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  board = json.loads((tmp_path / "scoreboard.json").read_text())
  assert board["quick"] and [r["entry"] for r in board["entries"]] == names
  for row, name in zip(board["entries"], names, strict=True):
    entry = scoreboard.BY_NAME[name]
    folder = tmp_path / name.replace(":", "_")
    runs = [json.loads((folder / "runs" / f"run_{i:03d}" /
                        "summary.json").read_text()) for i in range(2)]
    assert [r["steps"] for r in runs] == [20, 20]
    assert row["succeeded"] == sum(entry.success(r) for r in runs)
    assert row["diagnostics"] == [r["diagnostics"] for r in runs]
    # Seed n's decomposition sits on seed n's own target.
    assert (folder / "targets" / "seed_1" / "target_params.msgpack").exists()
  # VPD's TMS entry decomposes W's two uses apart (W, W_up) and the hidden
  # layer, and reports the worse use's MMCS.
  folder = tmp_path / "vpd_tms_5_2_identity"
  run = json.loads((folder / "runs" / "run_000" / "summary.json").read_text())
  assert sorted(k for k in run if k.startswith("alive/")) == [
      "alive/['W']", "alive/['W_up']", "alive/['hidden'][0]"]
  W = flax.serialization.msgpack_restore(
      (folder / "targets" / "seed_0" / "target_params.msgpack").read_bytes()
  )["W"]
  factors = np.load(folder / "runs" / "run_000" / "components.npz")
  each = [float(metrics.mmcs(W, factors[f"U['{n}']"] @ factors[f"V['{n}']"]))
          for n in ("W", "W_up")]
  assert run["mmcs_up"] == pytest.approx(each[1], rel=1e-5)
  assert run["mmcs"] == pytest.approx(min(each), rel=1e-5)
  with open(tmp_path / "scoreboard.csv") as f:
    assert [r["entry"] for r in csv.DictReader(f)] == names
  md = (tmp_path / "scoreboard.md").read_text()
  assert "quick smoke run" in md and "`spd_tms_5_2`" in md
  assert not list(tmp_path.glob("**/*.png"))      # --nofigures
  assert "SPD" in md and "auc_apd" in md and "auc_spd" in md
  assert "auc_vpd" in md
  # A second call trains nothing: both entries are read back.
  def no_training(*args, **kwargs):
    raise AssertionError("retrained a finished entry")
  monkeypatch.setattr(scoreboard.sweep_experiment, "train_and_evaluate",
                      no_training)
  rows = scoreboard.run(str(tmp_path), CONFIGS, names, 2, True)
  assert [r["succeeded"] for r in rows] == [
      r["succeeded"] for r in board["entries"]]
  assert os.path.exists(tmp_path / "scoreboard.md")


def test_campaign_options_reach_the_entry_and_export_its_row(
    tmp_path, monkeypatch):
  """`checkpoint_every` overrides the config's; a finished entry's row goes
  to the results folder with the command that made it."""
  seen = {}

  def fake_train(config, workdir):
    seen["checkpoint_every"] = config.checkpoint_every
    runs = [dict(mmcs=1.0, ml2r=1.0, faithfulness=1e-7, l0=1.0, steps=40,
                 diagnostics={})] * 2
    return _fake_runs(pathlib.Path(workdir), runs)

  monkeypatch.setattr(scoreboard.sweep_experiment, "train_and_evaluate",
                      fake_train)
  out = tmp_path / "results"
  scoreboard.run(str(tmp_path / "wd"), CONFIGS, ["spd_tms_40_10"], 2, False,
                 checkpoint_every=1000, results_dir=str(out),
                 command="python scripts/scoreboard.py --seeds=2")
  assert seen["checkpoint_every"] == 1000
  record = json.loads((out / "spd_tms_40_10.json").read_text())
  assert record["command"] == "python scripts/scoreboard.py --seeds=2"
  assert (record["row"]["succeeded"], record["row"]["seeds"]) == (2, 2)


def test_seeds_in_sweeps_of_one_pool_into_the_entry_row(tmp_path,
                                                        monkeypatch):
  """`per_sweep`: each group of seeds trains in its own folder and is read
  back once finished; the row holds every seed, the time their sum."""
  calls = []

  def fake_train(config, workdir):
    calls.append((config.sweep.seed, os.path.basename(workdir)))
    seeds = config.sweep.seed
    runs = [dict(mmcs=1.0 if s != 1 else 0.9, ml2r=1.0, faithfulness=1e-7,
                 l0=1.0, steps=40, diagnostics={}) for s in seeds]
    sweep = _fake_runs(pathlib.Path(workdir), runs)
    sweep.update(train_seconds=10.0 * len(seeds),
                 run_steps_per_s=40 * len(seeds) / (10.0 * len(seeds)))
    return _finished(workdir, config, sweep)

  monkeypatch.setattr(scoreboard.sweep_experiment, "train_and_evaluate",
                      fake_train)
  assert scoreboard.seed_groups(5, 2) == [(0, 1), (2, 3), (4,)]
  assert scoreboard.seed_groups(3) == [(0, 1, 2)]
  with pytest.raises(ValueError, match="positive"):
    scoreboard.seed_groups(3, 0)
  [row] = scoreboard.run(str(tmp_path), CONFIGS, ["spd_tms_40_10"], 3,
                         False, per_sweep=2)
  assert calls == [((0, 1), "seeds_0-1"), ((2,), "seeds_2-2")]
  assert (row["seeds"], row["succeeded"]) == (3, 2)
  assert [r["success"] for r in row["per_seed"]] == [True, False, True]
  assert row["train_seconds"] == 30.0 and row["run_steps_per_s"] == 4.0
  # Started again: both groups are read back, nothing is trained.
  again = scoreboard.run(str(tmp_path), CONFIGS, ["spd_tms_40_10"], 3,
                         False, per_sweep=2)
  assert len(calls) == 2 and again[0]["per_seed"] == row["per_seed"]


def test_a_variant_is_the_entry_with_values_on_top_under_its_own_name(
    tmp_path):
  [base] = scoreboard.select(["vpd_tms_40_10:identity"])
  [e] = scoreboard.with_settings(
      (base,), "scalar", {"method.ci_fn": "scalar",
                          "method.ci_hidden": (16,)})
  assert e.name == "vpd_tms_40_10:identity@scalar"
  assert (e.module, e.arg, e.success) == (base.module, base.arg,
                                          base.success)
  c = scoreboard.entry_config(e, CONFIGS, 3, quick=False)
  assert (c.method.ci_fn, tuple(c.method.ci_hidden)) == ("scalar", (16,))
  assert c.target.n_hidden == 10 and c.sweep.seed == (0, 1, 2)
  assert scoreboard.entry_config(base, CONFIGS, 3, False).method.ci_fn == (
      "layerwise")
  for bad in ("", "a@b", "x y", "a:b"):
    with pytest.raises(ValueError, match="settings tag"):
      scoreboard.with_settings((base,), bad, {})
  with pytest.raises(ValueError, match="unknown scoreboard entries"):
    scoreboard.select(["vpd_tms_4_10"])
  run = subprocess.run(
      [sys.executable, "scripts/scoreboard.py", f"--workdir={tmp_path}",
       "--quick", "--only=tms_5_2", "--set=method.topk=0.5"],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert run.returncode != 0
  assert "--set and --tag go together" in run.stderr


def test_finished_sweeps_are_read_back_from_their_records_on_a_new_machine(
    tmp_path, monkeypatch):
  """With a results folder, each finished sweep of seeds leaves a record
  (`pieces`); with the workdirs gone, the entry is scored from the records
  and nothing is trained again, unless the settings differ."""
  trained = []

  def fake_train(config, workdir):
    trained.append(config.sweep.seed)
    runs = [dict(mmcs=1.0, ml2r=1.0 + s / 100, faithfulness=1e-7, l0=1.0,
                 steps=config.steps, diagnostics=dict(dead=float(s)),
                 components={"W": [[0.1] * 5] * 5}, kept=[1, 2])
            for s in config.sweep.seed]
    return _fake_runs(pathlib.Path(workdir), runs)

  monkeypatch.setattr(scoreboard.sweep_experiment, "train_and_evaluate",
                      fake_train)
  out = tmp_path / "results"
  first = scoreboard.run(str(tmp_path / "wd"), CONFIGS, ["spd_tms_40_10"], 3,
                         False, per_sweep=2, results_dir=str(out),
                         command="python scripts/scoreboard.py --seeds=3")
  assert trained == [(0, 1), (2,)]
  rec = json.loads((out / "pieces" / "spd_tms_40_10" / "seeds_0-1.json"
                    ).read_text())
  assert (rec["seeds"], rec["command"]) == (
      [0, 1], "python scripts/scoreboard.py --seeds=3")
  assert rec["config"]["sweep"]["seed"] == [0, 1]
  assert "components" not in rec["runs"][0]        # the table is left out
  assert "kept" not in rec["runs"][0]              # and lists
  assert rec["runs"][1]["diagnostics"] == {"dead": 1.0}
  shutil.rmtree(tmp_path / "wd")                   # a new machine
  again = scoreboard.run(str(tmp_path / "wd"), CONFIGS, ["spd_tms_40_10"],
                         3, False, per_sweep=2, results_dir=str(out))
  assert trained == [(0, 1), (2,)]
  assert again[0]["per_seed"] == first[0]["per_seed"]
  assert again[0]["train_seconds"] == first[0]["train_seconds"]
  assert again[0]["diagnostics"] == first[0]["diagnostics"]
  # Other settings: the records are not theirs.
  [base] = scoreboard.select(["spd_tms_40_10"])
  [other] = scoreboard.with_settings((base,), "short", {"steps": 100})
  other = dataclasses.replace(other, name=base.name)
  assert scoreboard.pieces.find(
      str(out / "pieces"), base.name, (0, 1),
      scoreboard.entry_config(other, CONFIGS, (0, 1), False)) is None
  assert scoreboard.pieces.find(
      str(out / "pieces"), base.name, (0, 1),
      scoreboard.entry_config(base, CONFIGS, (0, 1), False)) is not None


def test_progress_says_where_each_sweep_stands(tmp_path, monkeypatch):
  def fake_train(config, workdir):
    runs = [dict(mmcs=1.0, ml2r=1.0, faithfulness=1e-7, l0=1.0,
                 steps=config.steps, diagnostics={})
            for _ in config.sweep.seed]
    return _finished(workdir, config, _fake_runs(pathlib.Path(workdir),
                                                 runs))

  monkeypatch.setattr(scoreboard.sweep_experiment, "train_and_evaluate",
                      fake_train)
  wd, out = str(tmp_path / "wd"), str(tmp_path / "results")
  names = ["spd_tms_40_10"]

  def states(**kw):
    return [r["state"] for r in scoreboard.progress(
        wd, CONFIGS, names, 3, per_sweep=2, **kw)]

  assert states() == ["not started", "not started"]
  scoreboard.run(wd, CONFIGS, names, 3, False, per_sweep=2, results_dir=out)
  assert states() == ["finished", "finished"]
  shutil.rmtree(wd)
  assert states(results_dir=out) == ["finished (record)"] * 2
  assert states() == ["not started"] * 2
  steps = {"seeds_0-1": 800}

  def latest(directory):
    step = steps.get(os.path.basename(os.path.dirname(directory)))
    if step == "bad":
      raise ValueError("unreadable")
    return step

  monkeypatch.setattr(scoreboard.checkpoint, "latest_step", latest)
  assert states() == ["step 800 of 40000", "not started"]
  steps["seeds_2-2"] = "bad"
  assert states() == ["step 800 of 40000", "no readable checkpoint"]
  rows = scoreboard.progress(wd, CONFIGS, names, 3, per_sweep=2)
  assert [(r["entry"], r["seeds"]) for r in rows] == [
      ("spd_tms_40_10", "0-1"), ("spd_tms_40_10", "2-2")]
