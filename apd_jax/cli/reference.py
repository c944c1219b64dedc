r"""SPD's step timed beside a reference implementation's, in one run.

  python scripts/benchmark.py --only=spd_tms_5_2,spd_tms_40_10,spd_resid_mlp_1 \
      --reference='REF_PYTHON REF_TIMER --case={case} --threads=2' --rounds=3

`--reference` is a command of the user's, run in the reference's own
environment (apd_jax ships no part of it): given a case's name in place of
`{case}` (`tms_5_2`, `tms_40_10`, `resid_mlp_1`: `REFERENCE_CASES`), it
times the reference's SPD training step at the paper's settings and prints,
as its last line, a JSON object with `ms_per_step` (its typical step, e.g.
the median of its timed steps). For each case, `rounds` times in turn: our step
(`benchmark.measure`), then the reference's command, so that both see the
machine in the same state; then the medians, the minima and their ratios,
with the load average before and after (`/proc/loadavg`), printed and
written to `<out>/reference.json`.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import time

# Our benchmark case -> the name the reference's timer is given.
REFERENCE_CASES = {"spd_tms_5_2": "tms_5_2", "spd_tms_40_10": "tms_40_10",
                   "spd_resid_mlp_1": "resid_mlp_1"}


def load() -> float | None:
  """The 1-minute load average, where the system tells it."""
  try:
    with open("/proc/loadavg") as f:
      return float(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return None


def reference_ms(command: str, case: str, timeout: float = 1800) -> float:
  """The `ms_per_step` the reference command prints for `case` (its last
  line of output, a JSON object)."""
  args = shlex.split(command.replace("{case}", case))
  run = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                       check=False)
  lines = run.stdout.strip().splitlines()
  try:
    if run.returncode:
      raise ValueError(f"exit status {run.returncode}")
    out = json.loads(lines[-1])
    ms = float(out["ms_per_step"])
  except (ValueError, IndexError, KeyError, TypeError) as e:
    raise RuntimeError(
        f"the reference command {args} gave no JSON line with ms_per_step "
        f"({e}); its output ends:\n{run.stdout[-1500:]}\n{run.stderr[-1500:]}"
    ) from e
  return ms


def side_by_side(case, command: str, measure, *, rounds: int = 3,
                 steps: int = 10) -> dict:
  """One case, ours (`measure(case, steps)['step_s']`: `benchmark.measure`)
  then the reference's, `rounds` times (see the module)."""
  if case.name not in REFERENCE_CASES:
    raise ValueError(f"no reference case for {case.name}; known: "
                     f"{sorted(REFERENCE_CASES)}")
  before, t = load(), time.time()
  ours, theirs = [], []
  for _ in range(rounds):
    ours.append(measure(case, steps)["step_s"] * 1e3)
    theirs.append(reference_ms(command, REFERENCE_CASES[case.name]))
  ours_ms, theirs_ms = statistics.median(ours), statistics.median(theirs)
  return dict(case=case.name, reference_case=REFERENCE_CASES[case.name],
              batch_size=case.batch_size, rounds=rounds, steps=steps,
              ms=ours, reference_ms=theirs, ms_median=ours_ms,
              reference_ms_median=theirs_ms,
              ratio_median=theirs_ms / ours_ms,
              ratio_min=min(theirs) / min(ours),
              load_before=before, load_after=load(),
              seconds=time.time() - t)


HEADER = (f"{'case':18s} {'ours ms':>8s} {'ref ms':>8s} {'ratio':>6s} "
          f"{'ours min':>8s} {'ref min':>8s} {'ratio':>6s}  load")


def line(r: dict) -> str:
  return (f"{r['case']:18s} {r['ms_median']:8.2f} "
          f"{r['reference_ms_median']:8.2f} {r['ratio_median']:5.2f}x "
          f"{min(r['ms']):8.2f} {min(r['reference_ms']):8.2f} "
          f"{r['ratio_min']:5.2f}x  {r['load_before']} -> {r['load_after']}")


def run(cases, command: str, measure, *, rounds: int = 3, steps: int = 10,
        out: str = "") -> list[dict]:
  """`side_by_side` for each of `cases` that the reference has; prints the
  table and writes `out/reference.json` after each case."""
  cases = [c for c in cases if c.name in REFERENCE_CASES]
  if not cases:
    raise ValueError(f"none of the cases has a reference; give --only with "
                     f"some of {sorted(REFERENCE_CASES)}")
  print(f"ms per step: medians and minima over {rounds} alternating rounds "
        f"(ours: the mean of {steps} steps each)", flush=True)
  print(HEADER, flush=True)
  rows = []
  for case in cases:
    rows.append(side_by_side(case, command, measure, rounds=rounds,
                             steps=steps))
    print(line(rows[-1]), flush=True)
    if out:
      os.makedirs(out, exist_ok=True)
      with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(dict(command=command, cases=rows), f, indent=2)
  return rows
