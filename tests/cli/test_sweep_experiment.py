"""A sweep from a config: tables, plots, per-run workdirs and the best run."""

import csv
import json

import numpy as np
import pytest

from apd_jax import targets
from apd_jax.cli import experiment
from apd_jax.cli import sweep_experiment
from apd_jax.cli import sweep_report
from configs import tms_5_2


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sweep")
  c = tms_5_2.get_config()
  c.update(steps=40, log_every=20, eval_batches=2, batch_size=512)
  c.target.steps = 300
  c.sweep.seed = (0, 1)
  c.sweep.topk = (0.211, 0.3)
  summary = sweep_experiment.train_and_evaluate(c, str(workdir))
  return workdir, summary


def test_is_sweep_only_with_values():
  c = tms_5_2.get_config()
  assert not sweep_experiment.is_sweep(c)
  c.sweep.lr = (0.01,)
  assert sweep_experiment.swept(c) == {"lr": (0.01,)}


def test_table_holds_every_runs_final_metrics(swept):
  workdir, summary = swept
  with open(workdir / "sweep.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(int(r["seed"]), float(r["topk"])) for r in rows] == [
      (0, 0.211), (0, 0.3), (1, 0.211), (1, 0.3)]
  md = (workdir / "sweep.md").read_text()
  for i, row in enumerate(rows):
    run = json.loads(
        (workdir / "runs" / f"run_{i:03d}" / "summary.json").read_text())
    for key in ("mmcs", "ml2r", "faithfulness", "topk_recon", "l0"):
      assert float(row[key]) == run[key], key
      assert sweep_report.fmt(run[key]) in md
    log = (workdir / "runs" / f"run_{i:03d}" / "metrics.jsonl").read_text()
    assert [json.loads(x)["step"] for x in log.splitlines()] == [20, 40]
    assert float(row["loss"]) == json.loads(log.splitlines()[-1])["loss"]
    assert list((workdir / "runs" / f"run_{i:03d}").glob("*tfevents*"))
  assert summary["n_runs"] == 4


def test_seeds_pooled_per_setting(swept):
  workdir, summary = swept
  with open(workdir / "sweep.csv") as f:
    rows = list(csv.DictReader(f))
  for pooled in summary["by_setting"]:
    mine = [float(r["mmcs"]) for r in rows
            if float(r["topk"]) == pooled["topk"]]
    assert pooled["seeds"] == 2
    np.testing.assert_allclose(pooled["mmcs"], np.mean(mine), rtol=1e-12)
    np.testing.assert_allclose(pooled["mmcs_sd"], np.std(mine), rtol=1e-9)
    assert pooled["success_frac"] == np.mean(np.array(mine) >= 0.99)


def test_plot_holds_the_runs_numbers(swept, tmp_path):
  workdir, _ = swept
  assert (workdir / "sweep_topk.png").stat().st_size > 0
  with open(workdir / "sweep.csv") as f:
    rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
  fig = sweep_report.plot_sweep(rows, "topk", ["mmcs", "l0"],
                                str(tmp_path / "p.png"))
  for ax, metric in zip(fig.axes, ["mmcs", "l0"], strict=True):
    np.testing.assert_array_equal(
        ax.collections[0].get_offsets(),
        [[r["topk"], r[metric]] for r in rows])
    assert ax.get_xlabel() == "topk" and ax.get_ylabel() == metric
  assert fig.texts[0].get_text() == (
      f"Each final metric against topk over the sweep's {len(rows)} runs")
  fig = sweep_report.plot_sweep(rows, "topk", ["mmcs"],
                                str(tmp_path / "q.png"), hue="seed")
  for seed, points in zip((0, 1), fig.axes[0].collections, strict=True):
    np.testing.assert_array_equal(
        points.get_offsets(),
        [[r["topk"], r["mmcs"]] for r in rows if r["seed"] == seed])


def test_best_run_exported_as_a_decomposition(swept):
  workdir, summary = swept
  with open(workdir / "sweep.csv") as f:
    mmcs = [float(r["mmcs"]) for r in csv.DictReader(f)]
  best = int(np.argmax(mmcs))
  assert summary["best_run"] == best
  run = json.loads((workdir / "best" / "summary.json").read_text())
  assert run["mmcs"] == mmcs[best]
  config = json.loads((workdir / "best" / "config.json").read_text())
  assert (config["seed"], config["method"]["topk"]) == (
      best // 2, (0.211, 0.3)[best % 2])
  for name in ("components.npz", "components.png", "losses.png",
               "metrics.jsonl", "target_params.msgpack"):
    assert (workdir / "best" / name).stat().st_size > 0, name


def test_target_per_seed_runs_equal_single_runs(tmp_path, monkeypatch):
  c = tms_5_2.get_config()
  c.update(steps=40, log_every=20, eval_batches=2, batch_size=512)
  c.target.steps = 300
  c.sweep.seed = (1, 2)       # config.seed (0) is not swept
  c.sweep.target_per_seed = True
  c.figures = False            # the numbers are compared, not the pictures
  built = []
  build = targets.build
  monkeypatch.setattr(targets, "build", lambda module, t, seed: (
      built.append(seed), build(module, t, seed))[1])
  sweep_experiment.train_and_evaluate(c, str(tmp_path / "sweep"))
  assert built == [1, 2]       # each seed's target, once; not seed 0's
  monkeypatch.setattr(targets, "build", build)
  for i, seed in enumerate((1, 2)):
    single = c.copy_and_resolve_references()
    single.seed = seed
    single.sweep.seed = ()
    single.sweep.target_per_seed = False
    want = experiment.train_and_evaluate(single, str(tmp_path / f"s{seed}"))
    got = json.loads((tmp_path / "sweep" / "runs" / f"run_{i:03d}"
                      / "summary.json").read_text())
    for key in ("mmcs", "ml2r", "faithfulness", "topk_recon"):
      np.testing.assert_allclose(got[key], want[key], rtol=1e-4, err_msg=key)
    saved = tmp_path / "sweep" / "targets" / f"seed_{seed}"
    assert ((saved / "target_params.msgpack").read_bytes()
            == (tmp_path / f"s{seed}" / "target_params.msgpack").read_bytes())
  assert not list(tmp_path.glob("**/*.png"))
  assert ((tmp_path / "s1" / "target_params.msgpack").read_bytes()
          != (tmp_path / "s2" / "target_params.msgpack").read_bytes())
  # Started again, the finished sweep resumes on the saved targets.
  first = (tmp_path / "sweep" / "runs" / "run_001" / "summary.json"
           ).read_text()
  sweep_experiment.train_and_evaluate(c, str(tmp_path / "sweep"))
  again = json.loads((tmp_path / "sweep" / "runs" / "run_001" /
                      "summary.json").read_text())
  for key in ("mmcs", "ml2r", "faithfulness", "topk_recon"):
    assert again[key] == json.loads(first)[key], key
  c.sweep.seed = ()
  c.sweep.topk = (0.2, 0.3)
  with pytest.raises(ValueError, match="needs seeds to sweep"):
    sweep_experiment.train_and_evaluate(c, str(tmp_path / "bad"))
