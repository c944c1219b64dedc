"""scripts/device_check.sh's dry run on the CPU, and its summary."""

import json
import math
import os
import pathlib
import subprocess

import pytest

from apd_jax.cli import device_check

ROOT = pathlib.Path(__file__).resolve().parents[2]
# What the dry run measures: each part's quick cases.
EXPECTED = {"spd_cases": ["spd_tms_5_2"],
            "apd_cases": ["tms_5_2", "resid_mlp_1_m1"],
            "spd_sweeps": ["spd_tms_5_2"]}
NUMBERS = ("step_s", "steps_per_s", "compile_s", "gflop_per_step",
           "gtranscendentals_per_step", "gbytes_per_step", "limit_s",
           "limit_fraction", "matmul_fraction", "memory_mib")


@pytest.mark.long
def test_the_dry_run_writes_every_part(tmp_path):
  out = tmp_path / "check"
  env = dict(os.environ, OUT=str(out))
  env.pop("DRY_RUN", None)
  run = subprocess.run(["bash", "scripts/device_check.sh", "--dry-run"],
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=420, check=False)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  for part, names in EXPECTED.items():
    with open(out / f"{part}.json") as f:
      result = json.load(f)
    assert [c["case"] for c in result["cases"]] == names, part
    for c in result["cases"]:
      assert "error" not in c, c
      for key in NUMBERS:
        assert math.isfinite(c[key]) and c[key] >= 0, (part, key, c[key])
      assert c["steps_per_s"] > 0 and c["gflop_per_step"] > 0
    assert all(math.isfinite(v) and v > 0
               for v in result["machine"].values())
  (sweep,) = json.loads((out / "spd_sweeps.json").read_text())["cases"]
  assert sweep["runs"] == 2
  summary = json.loads((out / "summary.json").read_text())
  assert [p["part"] for p in summary["parts"]] == list(EXPECTED)
  assert all(p["status"] == "ok" and not p["missing"]
             for p in summary["parts"])
  assert "spd_tms_5_2" in run.stdout and "resid_mlp_1_m1" in run.stdout


def test_the_summary_names_cases_a_part_did_not_reach(tmp_path):
  (tmp_path / "parts.tsv").write_text("spd_cases\t124\t140\n"
                                      "apd_cases\tskipped\t0\n")
  case = dict(case="spd_tms_5_2", runs=1, step_s=0.01,
              run_steps_per_s=100.0, limit_fraction=0.5,
              matmul_fraction=0.1, memory_mib=3.0, compile_s=2.0)
  (tmp_path / "spd_cases.json").write_text(json.dumps(dict(
      device="cpu", machine=dict(matmul_gflops=100.0),
      planned=["spd_tms_5_2", "spd_lm"], cases=[case])))
  summary = device_check.summarize(str(tmp_path), "cpu", 150)
  spd, apd = summary["parts"]
  assert spd["missing"] == ["spd_lm"] and "time limit" in spd["status"]
  assert apd["status"].startswith("skipped") and apd["missing"] == []
  text = device_check.table(summary)
  assert "spd_lm" in text and "not measured" in text and "10" in text
  assert (tmp_path / "summary.json").exists()
