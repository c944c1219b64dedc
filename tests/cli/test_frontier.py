"""The LM frontier's points from summary files, each method's best run, and
the script's outputs."""

import json
import pathlib
import subprocess
import sys

import pytest

from apd_jax.cli import frontier

ROOT = pathlib.Path(__file__).parents[2]


def fake_run(folder, method, beta, l0, masked, active, total=48):
  """A run's summary.json; its importance coefficient in its config.json,
  or for a sweep's run (`runs/run_<i>`) in the sweep's table."""
  folder.mkdir(parents=True)
  (folder / "summary.json").write_text(json.dumps(dict(
      l0=l0, alive=30, steps=100, wall_seconds=5.0,
      heldout_nats_per_byte_target=1.4,
      heldout_nats_per_byte_masked=masked,
      heldout_nats_per_byte_active=active,
      components=dict(method=method, counts={
          "a": dict(total=total // 2), "b": dict(total=total - total // 2)}))))
  if folder.parent.name == "runs":
    table = folder.parents[1] / "sweep.csv"
    lines = table.read_text() if table.exists() else "run,importance_coeff\n"
    table.write_text(lines + f"{int(folder.name[4:])},{beta}\n")
  else:
    (folder / "config.json").write_text(json.dumps(dict(
        method=dict(name=method.lower(), importance_coeff=beta))))


def test_points_best_runs_and_the_script(tmp_path):
  fake_run(tmp_path / "spd" / "runs" / "run_000", "SPD", 1e-3, 24.0, 1.45,
           1.6)
  fake_run(tmp_path / "spd" / "runs" / "run_001", "SPD", 1e-2, 4.8, 1.55,
           2.0)
  fake_run(tmp_path / "vpd", "VPD", 5e-6, 3.0, 1.48, 1.52)
  rows = frontier.collect([str(tmp_path / "spd"), str(tmp_path / "vpd")])
  assert [r["method"] for r in rows] == ["SPD", "SPD", "VPD"]
  assert rows[0]["l0_fraction"] == 0.5
  assert rows[1]["l0_fraction"] == pytest.approx(0.1)
  assert rows[1]["gap_masked"] == pytest.approx(0.15)
  assert rows[2]["gap_active"] == pytest.approx(0.12)
  assert [r["importance_coeff"] for r in rows] == [1e-3, 1e-2, 5e-6]
  chosen = frontier.best(rows)
  # SPD's sparser run misses the 0.1 gap: its best is the denser one.
  assert chosen["SPD"]["l0"] == 24.0 and chosen["VPD"]["l0"] == 3.0
  assert frontier.best(rows, gap=0.01) == {"SPD": None, "VPD": None}
  words = frontier.in_words(chosen)
  assert words[1].startswith("VPD: 6.2% active") and "goal reached" in (
      words[1])
  out = tmp_path / "out" / "lm_frontier"
  run = subprocess.run(
      [sys.executable, "scripts/frontier.py",
       f"--runs={tmp_path / 'spd'},{tmp_path / 'vpd'}", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "VPD: 6.2% active" in run.stdout
  saved = json.loads(out.with_suffix(".json").read_text())
  assert saved["best"]["VPD"]["run"] == str(tmp_path / "vpd")
  assert out.with_suffix(".png").stat().st_size > 0
  assert "| SPD | 0.01 | 100 | 4.8 | 10.0% |" in out.with_suffix(
      ".md").read_text()
  with pytest.raises(ValueError, match="no summary"):
    frontier.collect([str(tmp_path / "nothing")])
