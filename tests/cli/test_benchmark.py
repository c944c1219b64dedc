"""The benchmarks' measurements on tiny cases (numbers are not asserted)."""

import dataclasses
import pathlib
import re
import subprocess
import sys

from apd_jax.cli import benchmark


def test_measure_reports_consistent_figures():
  case = dataclasses.replace(benchmark.CASES[0], batch_size=64)
  r = benchmark.measure(case, steps=2)
  assert r["case"] == "tms_5_2" and r["batch_size"] == 64
  assert r["steps_per_s"] > 0 and r["compile_s"] >= 0
  assert abs(r["examples_per_s"] - 64 * r["steps_per_s"]) < 1e-6 * r[
      "examples_per_s"]
  assert r["gflop_per_step"] > 0 and r["memory_mib"] > 0
  assert abs(r["gflops"] - r["gflop_per_step"] * r["steps_per_s"]) < 1e-6


def test_the_language_model_case_counts_tokens():
  (case,) = [c for c in benchmark.CASES if c.name == "lm_per_position"]
  case = dataclasses.replace(
      case, n_components=4, rank=2, batch_size=2,
      dims=(("n_layers", 1), ("d_model", 16), ("n_heads", 2),
            ("d_mlp", 32), ("context", 8)))
  r = benchmark.measure(case, steps=2)
  assert abs(r["tokens_per_s"] - 8 * r["examples_per_s"]) < 1e-6 * r[
      "tokens_per_s"]
  assert r["gflop_per_step"] > 0 and r["attribution"].startswith(
      ("forward", "reverse"))


def test_sweep_benchmark_per_step_prints_both_arms_and_their_ratio():
  root = pathlib.Path(__file__).resolve().parents[2]
  run = subprocess.run(
      [sys.executable, "scripts/sweep_benchmark.py", "--arm=per_step",
       "--config=tms_5_2", "--runs=2", "--steps=2"],
      cwd=root, capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  m = re.search(r"one run ([\d.]+) ms/step, the sweep ([\d.]+) ms/step = "
                r"([\d.]+) single-run steps", run.stdout)
  assert m, run.stdout
  one, sweep, ratio = map(float, m.groups())
  assert one > 0 and abs(sweep / one - ratio) < 0.01 * ratio + 0.005
