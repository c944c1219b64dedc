"""The reproduction campaign's committed results, and the tables made of them.

A scoreboard entry that finished (`scoreboard.run` with a results folder)
leaves one small JSON there, `<entry>.json`: its row (success per seed,
metrics, wall time, failure signs), the date, the machine, jax's version and
the command that ran it. These files are what the repository keeps; the
workdirs (checkpoints, figures) stay outside it. The README's results table
is generated from them (`update_readme`, run by `scripts/scoreboard.py
--results=...` and by hand with `python -m apd_jax.cli.results`), and a test
checks that the two agree.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Any

from apd_jax.cli import sweep_report

BEGIN = "<!-- results:begin (generated from docs/results; do not edit) -->"
END = "<!-- results:end -->"
COLUMNS = ("entry", "method", "seeds succeeding", "metrics", "steps",
           "wall", "date")


def export(row: dict[str, Any], meta: dict[str, Any], folder: str,
           command: str) -> str:
  """Writes the finished entry's `row` to `folder/<entry>.json`; returns
  the path."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, row["entry"].replace(":", "_") + ".json")
  record = dict(entry=row["entry"], date=meta["date"], jax=meta["jax"],
                devices=meta["devices"], command=command, row=row)
  with open(path, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.write("\n")
  return path


def load(folder: str) -> list[dict[str, Any]]:
  """Every record in `folder`, by entry name."""
  out = []
  for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    with open(path) as f:
      out.append(json.load(f))
  return sorted(out, key=lambda r: r["entry"])


def _metrics(row: dict[str, Any]) -> str:
  fmt = sweep_report.fmt
  keys = [k for k in ("mmcs", "ml2r", "features_recovered",
                      "features_with_own_subcomponent",
                      "min_function_recovery") if k in row]
  out = [f"{k} {fmt(row[k])} ± {fmt(row[k + '_sd'])}" for k in keys]
  if "ci_check" in row:     # the VPD authors' check on one-hot probes
    out.append(f"CI check {row['ci_check']} of {row['seeds']}")
  return "; ".join(out)


def table(records: list[dict[str, Any]]) -> str:
  """The Markdown table of `records` and the commands that made them."""
  if not records:
    return "No campaign entry has finished yet.\n"
  rows = []
  for rec in records:
    r = rec["row"]
    rows.append({
        "entry": f"`{r['entry']}`", "method": r["method"].upper(),
        "seeds succeeding": f"{r['succeeded']} of {r['seeds']}",
        "metrics": _metrics(r), "steps": r["steps"],
        "wall": f"{r['train_seconds'] / 3600:.1f} h",
        "date": f"{rec['date']} ({rec['devices']})"})
  commands = sorted({rec["command"] for rec in records})
  return (sweep_report.markdown(rows, COLUMNS) + "\nMade by:\n\n```bash\n"
          + "\n".join(commands) + "\n```\n")


def render(text: str, folder: str) -> str:
  """`text` (the README) with the block between the markers regenerated."""
  if BEGIN not in text or END not in text:
    raise ValueError(f"no {BEGIN!r} ... {END!r} block to fill")
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  return head + BEGIN + "\n" + table(load(folder)) + END + tail


def update_readme(readme: str, folder: str) -> bool:
  """Regenerates the README's results block; returns whether it changed."""
  with open(readme) as f:
    old = f.read()
  new = render(old, folder)
  if new != old:
    with open(readme, "w") as f:
      f.write(new)
  return new != old


if __name__ == "__main__":
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
  args = sys.argv[1:] or [os.path.join(root, "README.md"),
                          os.path.join(root, "docs", "results")]
  print("updated" if update_readme(*args) else "up to date")
