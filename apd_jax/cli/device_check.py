r"""The summary of `scripts/device_check.sh`: its parts' results in one table.

  python -m apd_jax.cli.device_check --out=runs/device_check

Reads the parts' exit statuses (`<out>/parts.tsv`: name, status, seconds)
and the JSON each part's benchmark wrote (`<out>/<part>.json`), prints one
row per case (and the cases a part planned but did not reach), and writes
everything to `<out>/summary.json`.
"""

from __future__ import annotations

import json
import math
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
# A part's exit status in words.
STATUS = {"0": "ok", "124": "stopped at its time limit", "137": "killed",
          "skipped": "skipped: no time left"}


def define_flags() -> None:
  flags.DEFINE_string("out", None, "The device check's output directory.")
  flags.DEFINE_string("backend", "", "JAX's backend, as the script found.")
  flags.DEFINE_integer("seconds", 0, "The script's wall time so far.")
  flags.mark_flags_as_required(["out"])


def _parts(out: str) -> list[dict]:
  """The parts in the order they ran, each with its benchmark JSON."""
  parts, lines = [], []
  path = os.path.join(out, "parts.tsv")
  if os.path.exists(path):
    with open(path) as f:
      lines = f.read().splitlines()
  for text in filter(None, lines):
    name, rc, seconds = text.split("\t")
    part = dict(part=name, status=STATUS.get(rc, f"failed (exit {rc})"),
                seconds=int(seconds), planned=[], cases=[])
    result = os.path.join(out, f"{name}.json")
    if os.path.exists(result):
      with open(result) as f:
        part.update(json.load(f), part=name)
    parts.append(part)
  return parts


def summarize(out: str, backend: str = "", seconds: int = 0) -> dict:
  """`summary.json`'s content: every part, with `missing` (the planned
  cases it did not measure) and the machine's rates."""
  parts = _parts(out)
  for p in parts:
    done = {c["case"] for c in p["cases"]}
    p["missing"] = [n for n in p["planned"] if n not in done]
  device = next((p["device"] for p in parts if "device" in p), "")
  machine = next((p["machine"] for p in parts if "machine" in p), {})
  summary = dict(backend=backend, device=device, seconds=seconds,
                 machine=machine, parts=parts)
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def _num(v, scale: float = 1.0, fmt: str = ".3g") -> str:
  if not isinstance(v, (int, float)) or not math.isfinite(v):
    return "-"
  return format(v * scale, fmt)


def table(summary: dict) -> str:
  """The summary as text: the machine, then a row per case."""
  m = summary["machine"]
  lines = [f"device check on {summary['device'] or summary['backend']}: "
           f"{summary['seconds']} s; matmul "
           f"{_num(m.get('matmul_gflops'))} GFLOP/s, transcendentals "
           f"{_num(m.get('transcendentals_g_per_s'))} G/s, streaming "
           f"{_num(m.get('stream_gb_per_s'))} GB/s"]
  head = (f"{'case':26s} {'runs':>4s} {'ms/step':>9s} {'run-steps/s':>11s} "
          f"{'% limit':>7s} {'% matmul':>8s} {'MiB':>8s} {'compile s':>9s}")
  for p in summary["parts"]:
    lines += ["", f"{p['part']} ({p['status']}, {p['seconds']} s)", head]
    for c in p["cases"]:
      if "error" in c:
        lines.append(f"{c['case']:26s} failed: {c['error'][:200]}")
        continue
      lines.append(
          f"{c['case']:26s} {c['runs']:4d} {_num(c['step_s'], 1e3):>9s} "
          f"{_num(c['run_steps_per_s']):>11s} "
          f"{_num(c.get('limit_fraction'), 100, '.1f'):>7s} "
          f"{_num(c.get('matmul_fraction'), 100, '.1f'):>8s} "
          f"{_num(c['memory_mib'], 1, '.0f'):>8s} "
          f"{_num(c['compile_s'], 1, '.1f'):>9s}")
    for name in p["missing"]:
      lines.append(f"{name:26s} not measured")
  return "\n".join(lines)


def main(argv):
  del argv
  print(table(summarize(FLAGS.out, FLAGS.backend, FLAGS.seconds)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
