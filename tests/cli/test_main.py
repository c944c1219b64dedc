"""The command line, end to end on a tiny run, with config overrides."""

import json
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[2]


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
  assert "| c | frequency | mean attribution |" in (
      tmp_path / "summary.md").read_text()
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
          "--config.target.steps=50"]
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
