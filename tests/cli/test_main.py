"""The command line, end to end on a tiny run, with config overrides."""

import importlib.util
import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from apd_jax import main as apd_main
from apd_jax.cli import config as cli_config
from apd_jax.cli import experiment
from apd_jax.cli import sweep_experiment

ROOT = pathlib.Path(__file__).parents[2]


@pytest.mark.long
def test_cli_writes_every_output_and_a_rerun_resumes(tmp_path):
  """A full run, then the same command again after removing the step-200
  checkpoint (as if the run had died before writing it): the rerun reloads
  the target, cuts the log back to step 100, trains steps 101..200 and ends
  with the same summary."""
  cmd = [sys.executable, "-m", "apd_jax.main",
         "--config=configs/tms_5_2.py", f"--workdir={tmp_path}",
         "--config.steps=200", "--config.log_every=100",
         "--config.checkpoint_every=100", "--config.target.steps=300",
         "--config.eval_batches=2"]
  run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "step 200/200" in run.stderr and "steps/s" in run.stderr
  summary = json.loads((tmp_path / "summary.json").read_text())
  for key in ("mmcs", "ml2r", "faithfulness", "topk_recon", "l0",
              "dead_components", "steps", "wall_seconds"):
    assert key in summary, key
  assert summary["steps"] == 200
  assert 0.0 < summary["mmcs"] <= 1.0 + 1e-6
  log = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in log] == [100, 200]
  for name in ("components.png", "losses.png", "target_params.msgpack",
               "components.npz", "config.json", "summary.md", "summary.png",
               "top_inputs.png", "decomposition/decomposition.json"):
    assert (tmp_path / name).stat().st_size > 0, name
  # Every component described: in summary.json, summary.md and the log.
  counts = summary["components"]["counts"]["all"]
  assert counts["total"] == 5 == len(summary["components"]["components"])
  md = (tmp_path / "summary.md").read_text()
  assert "| c | frequency | mean attribution |" in md
  # One sample per report: the table's frequencies are the top inputs'.
  table = {int(c): f for c, f in re.findall(r"^\| (\d+) \| ([\d.]+) \|",
                                              md, re.M)}
  tops = dict(re.findall(r"^- \*\*c(\d+)\*\* \(frequency ([\d.]+)\)", md,
                         re.M))
  assert tops and all(table[int(c)] == f for c, f in tops.items())
  header = md.splitlines()[2]                 # "APD decomposition on ..."
  alive = int(re.search(r"(\d+) of 5 alive", header).group(1))
  assert alive == sum(c["status"] != "dead"
                      for c in summary["components"]["components"])
  assert "alive " not in md.splitlines()[3]   # the totals: no second count
  assert "components:" in run.stderr and "eff.rank" in run.stderr
  assert '"components"' not in run.stdout and '"mmcs"' in run.stdout
  assert json.loads((tmp_path / "config.json").read_text())["steps"] == 200
  (events,) = tmp_path.glob("events.out.tfevents.*")
  data = events.read_bytes()
  assert b"brain.Event:2" in data and b"topk_recon" not in data
  for tag in (b"loss", b"faithfulness", b"minimality", b"simplicity",
              b"steps_per_s", b"components", b"\x89PNG"):
    assert tag in data, tag

  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
      "100", "200"]

  shutil.rmtree(tmp_path / "checkpoints" / "200")
  run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "checkpoint at step 100: resuming" in run.stderr
  assert "loaded target params" in run.stderr
  assert "step 200/200" in run.stderr and "step 100/200" not in run.stderr
  log = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in log] == [100, 200]
  again = json.loads((tmp_path / "summary.json").read_text())
  for key in ("faithfulness", "topk_recon", "l0", "mmcs", "ml2r"):
    assert again[key] == summary[key], key


def test_restart_with_other_settings_is_refused_unless_fresh(tmp_path):
  """Refused with the differing fields named; --fresh starts again, here on
  the target the first run saved (given as target.path)."""
  base = [sys.executable, "-m", "apd_jax.main",
          "--config=configs/tms_5_2.py", f"--workdir={tmp_path}",
          "--config.log_every=10", "--config.eval_batches=1",
          "--config.target.steps=50", "--config.figures=False"]
  first = subprocess.run(base + ["--config.steps=10"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-3000:]
  other = subprocess.run(base + ["--config.steps=20",
                                 "--config.method.topk=0.3"],
                         cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
  assert other.returncode != 0
  assert "method.topk: 0.211 -> 0.3, steps: 10 -> 20" in other.stderr
  assert json.loads((tmp_path / "config.json").read_text())["steps"] == 10
  # Afresh, on the target the first run trained and saved (reloaded).
  saved = tmp_path / "target.msgpack"
  shutil.copy(tmp_path / "target_params.msgpack", saved)
  fresh = subprocess.run(base + ["--config.steps=20",
                                 "--config.method.topk=0.3",
                                 f"--config.target.path={saved}", "--fresh"],
                         cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
  assert fresh.returncode == 0, fresh.stderr[-3000:]
  assert "step 10/20" in fresh.stderr and "resuming" not in fresh.stderr
  assert json.loads((tmp_path / "config.json").read_text())["method"][
      "topk"] == 0.3
  assert "loaded target params" in fresh.stderr
  assert saved.read_bytes() == (tmp_path / "target_params.msgpack"
                                ).read_bytes()


def test_unknown_config_argument_is_rejected(tmp_path):
  run = subprocess.run(
      [sys.executable, "-m", "apd_jax.main",
       "--config=configs/tms_5_2.py:quikc", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode != 0
  assert "unknown config argument 'quikc'" in run.stderr
  assert not (tmp_path / "config.json").exists()


def test_an_option_the_method_does_not_take_is_refused_in_one_line(
    tmp_path):
  """`--config.method.topk` on an SPD config (and a misspelt training
  option) stop at parsing: one line naming it and the valid options, no
  traceback, nothing written."""
  for flag, named, valid in (
      ("--config.method.topk=0.3", "'topk'", "importance_coeff"),
      ("--config.stpes=500", "did you mean steps?", "batch_size")):
    run = subprocess.run(
        [sys.executable, "-m", "apd_jax.main",
         "--config=configs/spd_tms_5_2.py", f"--workdir={tmp_path / 'w'}",
         flag], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert named in lines[0] and valid in lines[0]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "w").exists()


def refused(tmp_path, *flags):
  """`python -m apd_jax.main` with `flags`, expected to stop: its stderr
  lines other than platform warnings (absl `W` lines)."""
  run = subprocess.run(
      [sys.executable, "-m", "apd_jax.main", f"--workdir={tmp_path / 'w'}",
       *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 2, run.stderr[-3000:]
  assert "Traceback" not in run.stderr, run.stderr[-3000:]
  assert not (tmp_path / "w").exists()   # nothing trained or written
  return [line for line in run.stderr.strip().splitlines()
          if not line.startswith("W")]


@pytest.mark.parametrize("flags,message", [
    (("--config=configs/nope.py",),
     "--config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    (("--config=configs/tms_5_2.py", "--config.steps=abc"),
     "--config.steps=abc: invalid literal for int()"),
    (("--config=configs/tms_5_2.py", "--config.method.topk=-1"),
     "topk must be positive, got -1.0"),
    (("--config=configs/tms_5_2.py", "--config.method.n_components=0"),
     "n_components must be positive, got 0"),
    (("--config=configs/tms_5_2.py", "--config.lr_schedule=foo"),
     "lr_schedule must be one of ('constant', 'cosine', 'half_cosine'), "
     "got 'foo'"),
    (("--config=configs/tms_5_2.py", "--config.sweep.topk=0.2,-1"),
     "topk must be positive, got -1"),
    (("--config=configs/tms_5_2.py", "--config.mesh.component=3"),
     "mesh component=3 must divide the"),
    (("--config=configs/tms_5_2.py", "--config.include=nope"),
     "include='nope' matches no leaf"),
])
def test_a_bad_option_is_one_line_before_anything_is_written(
    tmp_path, flags, message):
  """A missing config file, a value of the wrong type, a value the method
  or Training refuses, a bad sweep value, mesh or include: `error: ...`,
  exit status 2, before the target is trained or the workdir made."""
  lines = refused(tmp_path, *flags)
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  assert message in lines[0]


def test_traceback_flag_shows_the_traceback(tmp_path):
  run = subprocess.run(
      [sys.executable, "-m", "apd_jax.main", "--config=configs/tms_5_2.py",
       f"--workdir={tmp_path / 'w'}", "--config.method.topk=-1",
       "--traceback"], cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert run.returncode == 1
  assert "Traceback" in run.stderr
  assert "ConfigError: topk must be positive, got -1.0" in run.stderr
  assert not (tmp_path / "w").exists()


def tiny_config(**options):
  c = _config("tms_5_2")
  c.update(steps=10, log_every=10, eval_batches=1, batch_size=64)
  c.target.steps = 50
  c.method.update(options)
  return c


def _config(name):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_train_and_evaluate_checks_before_writing(tmp_path):
  """Both runners refuse a bad value before making the workdir; a sweep's
  value and setting too, and a refused --fresh run deletes nothing."""
  with pytest.raises(cli_config.ConfigError, match="topk must be positive"):
    experiment.train_and_evaluate(tiny_config(topk=-1.0), str(tmp_path / "a"))
  c = tiny_config()
  c.sweep.topk = (0.2, -1.0)
  with pytest.raises(cli_config.ConfigError, match="topk must be positive"):
    sweep_experiment.train_and_evaluate(c, str(tmp_path / "b"))
  c.sweep.topk = (0.2, 0.3)
  c.sweep.select = "nope"
  with pytest.raises(cli_config.ConfigError, match="sweep.select='nope'"):
    sweep_experiment.train_and_evaluate(c, str(tmp_path / "c"))
  assert not list(tmp_path.iterdir())
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "config.json").write_text("{}")
  with pytest.raises(cli_config.ConfigError, match="n_components must be"):
    apd_main.run(tiny_config(n_components=0), str(tmp_path / "d"),
                 fresh=True)
  assert (tmp_path / "d" / "config.json").exists()


def test_an_internal_error_is_not_taken_for_a_bad_option(monkeypatch):
  """Only a ValueError or TypeError of the checks is a user's error."""
  def broken(*a, **k):
    raise RuntimeError("a bug")
  monkeypatch.setattr(experiment, "check_target", broken)
  with pytest.raises(RuntimeError, match="a bug"):
    experiment.check_run(tiny_config(), "/nonexistent")
