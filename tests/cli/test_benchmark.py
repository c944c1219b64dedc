"""The benchmarks' measurements on tiny cases (numbers are not asserted)."""

import dataclasses
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from apd_jax import methods
from apd_jax.cli import bench_cases
from apd_jax.cli import benchmark
from apd_jax.cli import family
from apd_jax.cli import machine_rates
from apd_jax.cli import scoreboard


def _case(name, **changes):
  (case,) = [c for c in bench_cases.CASES if c.name == name]
  return dataclasses.replace(case, **changes)


def test_measure_reports_consistent_figures():
  case = _case("tms_5_2", batch_size=64, train_steps=7200)
  r = benchmark.measure(case, steps=2)
  assert r["case"] == "tms_5_2" and r["batch_size"] == 64
  # 7,200 steps at this rate: 7,200 step times, in hours.
  assert r["train_hours"] == pytest.approx(2 * r["step_s"], rel=1e-9)
  assert r["steps_per_s"] > 0 and r["compile_s"] >= 0
  assert abs(r["examples_per_s"] - 64 * r["steps_per_s"]) < 1e-6 * r[
      "examples_per_s"]
  assert r["gflop_per_step"] > 0 and r["memory_mib"] > 0
  assert r["gbytes_per_step"] > 0 and r["counted_loops"] >= 0
  assert abs(r["gflops"] - r["gflop_per_step"] * r["steps_per_s"]) < 1e-6


@pytest.mark.long
def test_the_language_model_case_counts_tokens():
  case = _case(
      "lm_per_position", batch_size=2,
      options=dict(_case("lm_per_position").options, n_components=4, rank=2),
      dims=(("n_layers", 1), ("d_model", 16), ("n_heads", 2),
            ("d_mlp", 32), ("context", 8)))
  r = benchmark.measure(case, steps=2)
  assert abs(r["tokens_per_s"] - 8 * r["examples_per_s"]) < 1e-6 * r[
      "tokens_per_s"]
  assert r["gflop_per_step"] > 0 and r["attribution"].startswith(
      ("forward", "reverse"))


def test_spd_work_is_counted_on_the_unblocked_step():
  # The blocked backward pass is a loop (here over 4 blocks of 128 rows),
  # whose body XLA counts once.
  case = _case("spd_tms_40_10", batch_size=512)
  step, state, args, _, _ = benchmark.build(case)
  compiled = benchmark._jit(step).lower(state, args).compile()
  blocked = benchmark._cost(compiled)
  r = benchmark.measure(case, steps=2)
  assert r["counted_loops"] < compiled.as_text().count(" while(")
  assert r["gtranscendentals_per_step"] * 1e9 > 1.2 * blocked[
      "transcendentals"]
  assert r["gflop_per_step"] * 1e9 > blocked["flops"]


@pytest.mark.parametrize("name", ["spd_tms_5_2", "spd_tms_40_10",
                                  "spd_resid_mlp_1", "spd_resid_mlp_2",
                                  "spd_lm"])
def test_the_spd_cases_have_their_configs_options(name):
  configs = pathlib.Path(bench_cases.CONFIGS)
  want = bench_cases.config_case(name, scoreboard.load_config(
      str(configs), name, None))
  case = _case(name)
  assert case.method == want.method == "spd"
  assert methods.get("spd")(**case.options) == methods.get("spd")(
      **want.options)
  assert case.batch_size == want.batch_size
  assert (case.include or bench_cases.INCLUDE[case.target]) == want.include
  shapes = [jax.eval_shape(lambda c=c: benchmark._target(c)[1])
            for c in (case, want)]
  assert shapes[0] == shapes[1]


def test_the_scoreboard_entries_become_sweeps():
  cases = bench_cases.sweep_cases(["spd"], 3)
  names = [e.name for e in scoreboard.ENTRIES if e.method == "spd"]
  assert [c.name for c in cases] == names
  assert all(c.runs == 3 and c.method == "spd" for c in cases)
  (identity,) = [c for c in cases if c.name == "spd_tms_5_2:identity"]
  assert dict(identity.dims)["n_hidden_layers"] == 1
  with pytest.raises(ValueError, match="unknown scoreboard entries"):
    bench_cases.sweep_cases(["nope"], 2)
  # The family's members: the sizes each sets on its config, and the
  # config's steps to project the campaign's time from.
  members = bench_cases.family_cases("spd", 5)
  assert [c.name for c in members] == [
      e.name for e in family.family("spd", bench_cases.CONFIGS)]
  (tms_30,) = [c for c in members if c.name == "tms_30_6:identity"]
  assert (dict(tms_30.dims)["n_features"], dict(tms_30.dims)["n_hidden"],
          dict(tms_30.dims)["n_hidden_layers"]) == (30, 6, 1)
  assert tms_30.options["n_components"] == 120      # C = 4 F, as 5-2's 20
  assert tms_30.runs == 5 and tms_30.train_steps == 40_000


def test_select_picks_by_name_method_and_quick():
  cases = bench_cases.CASES
  assert [c.name for c in benchmark.select(cases, method="spd",
                                           quick=True)] == ["spd_tms_5_2"]
  assert [c.name for c in benchmark.select(cases, method="apd", quick=True)
          ] == ["tms_5_2", "resid_mlp_1_m1"]
  assert all(c.method == "spd" for c in benchmark.select(cases,
                                                         method="spd"))
  with pytest.raises(ValueError, match="unknown benchmark cases"):
    benchmark.select(cases, only=["nope"])


def test_limit_adds_matmul_and_transcendental_time():
  row = dict(gflop_per_step=2.0, gtranscendentals_per_step=0.5,
             gbytes_per_step=4.0, step_s=0.1, gflops=20.0)
  rates = dict(matmul_gflops=100.0, transcendentals_g_per_s=10.0,
               stream_gb_per_s=200.0)
  got = machine_rates.limit(row, rates)
  assert got["limit_s"] == pytest.approx(0.02 + 0.05)
  assert got["limit_fraction"] == pytest.approx(0.7)
  assert got["matmul_fraction"] == pytest.approx(0.2)
  assert got["stream_s"] == pytest.approx(0.02)


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


_FAKE_REFERENCE = """
import json, sys
with open(sys.argv[1], "a") as f:
  f.write("reference " + sys.argv[2] + "\\n")
print("warming up")
print(json.dumps({"ms_per_step": 40.0, "case": sys.argv[2]}))
"""


def test_the_reference_is_timed_in_turn_with_ours(tmp_path):
  from apd_jax.cli import reference  # noqa: PLC0415
  log = tmp_path / "order.txt"
  timer = tmp_path / "timer.py"
  timer.write_text(_FAKE_REFERENCE)
  command = f"{sys.executable} {timer} {log} {{case}}"
  ours_s = iter([0.010, 0.030, 0.011])

  def measure(case, steps):    # benchmark.measure's step time, logged
    assert steps == 4
    with open(log, "a") as f:
      f.write(f"ours {case.name}\n")
    return dict(step_s=next(ours_s))

  r = reference.side_by_side(_case("spd_tms_5_2"), command, measure,
                             rounds=3, steps=4)
  assert log.read_text().split("\n")[:-1] == [
      "ours spd_tms_5_2", "reference tms_5_2"] * 3
  assert r["reference_ms"] == [40.0] * 3
  assert r["ms"] == pytest.approx([10.0, 30.0, 11.0], rel=1e-12)
  assert r["ratio_median"] == pytest.approx(40 / 11, rel=1e-12)
  assert r["ratio_min"] == pytest.approx(4.0, rel=1e-12)
  with pytest.raises(RuntimeError, match="ms_per_step"):
    reference.reference_ms(f"{sys.executable} -c print(1)", "tms_5_2")
  with pytest.raises(ValueError, match="no reference case"):
    reference.side_by_side(_case("tms_5_2"), command, measure)
