"""The language-model frontier: how sparse a decomposition is against how
well its sparse pass predicts, for each method, from finished runs.

    rows = frontier.collect(["runs/spd_lm", "runs/vpd_lm_sweep"])
    frontier.write(rows, "docs/results/lm_frontier")   # .json, .md, .png

A run is a point: its L0 (active subcomponents per position) as a
fraction of all its subcomponents, against the held-out cross-entropy of
its masked pass (the method's minimality masks: SPD's `G`, VPD's `ci`)
and of its active-only pass (1 on the components its L0 counts, 0
elsewhere), each minus the target's. A sweep's runs (`runs/run_XXX`) are a
point each. `best` picks, per method, the sparsest run within a gap.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from typing import Any
from typing import Sequence

from apd_jax.analysis import plotting

GAP = 0.1         # nats per byte: the masked pass's allowed distance
FRACTION = 0.1    # of all subcomponents active per position: the goal


def _summaries(path: str) -> list[str]:
  """The summary files under a run or sweep folder `path`."""
  own = os.path.join(path, "summary.json")
  runs = sorted(glob.glob(os.path.join(path, "runs", "run_*",
                                       "summary.json")))
  return runs or ([own] if os.path.exists(own) else [])


def _total(summary: dict) -> int:
  counts = summary.get("components", {}).get("counts", {})
  return int(sum(g["total"] for g in counts.values()))


def _importance(run: str) -> float | None:
  """The run's importance coefficient: its sweep's row (`sweep.csv`) for a
  sweep's run, else its `config.json`."""
  sweep_dir = os.path.dirname(os.path.dirname(run))
  table = os.path.join(sweep_dir, "sweep.csv")
  if os.path.basename(os.path.dirname(run)) == "runs" and os.path.exists(
      table):
    with open(table) as f:
      for r in csv.DictReader(f):
        if f"run_{int(r['run']):03d}" == os.path.basename(run):
          if "importance_coeff" in r:
            return float(r["importance_coeff"])
    run = sweep_dir
  path = os.path.join(run, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("method", {}).get("importance_coeff")


def row(path: str) -> dict[str, Any]:
  """One run's point from its `summary.json`."""
  with open(path) as f:
    s = json.load(f)
  total = _total(s)
  ce = {k: s[f"heldout_nats_per_byte_{k}"] for k in ("target", "masked",
                                                      "active")}
  run = os.path.dirname(path)
  return dict(
      run=run, method=s.get("components", {}).get("method", "?"),
      importance_coeff=_importance(run),
      steps=s.get("steps"), wall_seconds=s.get("wall_seconds"),
      l0=s["l0"], subcomponents=total,
      l0_fraction=s["l0"] / total if total else None, alive=s.get("alive"),
      ce_target=ce["target"], ce_masked=ce["masked"], ce_active=ce["active"],
      gap_masked=ce["masked"] - ce["target"],
      gap_active=ce["active"] - ce["target"])


def collect(paths: Sequence[str]) -> list[dict[str, Any]]:
  """Every run under `paths` (run folders or sweep folders)."""
  out = [row(p) for path in paths for p in _summaries(path)]
  if not out:
    raise ValueError(f"no summary.json under {list(paths)}")
  return out


def best(rows: list[dict], gap: float = GAP) -> dict[str, dict | None]:
  """Per method, its sparsest run whose masked pass is within `gap` nats
  per byte of the target (None where none is)."""
  out = {}
  for r in rows:
    out.setdefault(r["method"], None)
    if r["gap_masked"] <= gap and (out[r["method"]] is None or
                                   r["l0_fraction"] <
                                   out[r["method"]]["l0_fraction"]):
      out[r["method"]] = r
  return out


def table(rows: list[dict]) -> str:
  """The runs as a markdown table, sparsest first within each method."""
  head = ("| method | β (importance) | steps | L0 / position | of all | "
          "alive | CE masked − target | CE active − target |\n"
          "|---|---|---|---|---|---|---|---|\n")
  lines = [
      f"| {r['method']} | {r['importance_coeff']} | {r['steps']} | "
      f"{r['l0']:.1f} | {100 * r['l0_fraction']:.1f}% | {r['alive']} | "
      f"{r['gap_masked']:.3f} | {r['gap_active']:.3f} |"
      for r in sorted(rows, key=lambda r: (r["method"], r["l0_fraction"]))]
  return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
  """L0 fraction against each pass's cross-entropy gap, a marker per
  method; the goal's corner shaded."""
  import matplotlib.pyplot as plt  # noqa: PLC0415
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, key, name in ((axes[0], "gap_masked", "masked pass"),
                        (axes[1], "gap_active", "active-only pass")):
    for method, marker in zip(sorted({r["method"] for r in rows}), "osd^v",
                              strict=False):
      mine = sorted((r for r in rows if r["method"] == method),
                    key=lambda r: r["l0_fraction"])
      ax.plot([100 * r["l0_fraction"] for r in mine],
              [r[key] for r in mine], marker=marker, label=method)
    ax.axhspan(0, GAP, xmin=0, xmax=1, color="0.9", zorder=0)
    ax.axvline(100 * FRACTION, color="0.6", linestyle="--", linewidth=1)
    ax.set_xlabel("active subcomponents per position (% of all)")
    ax.set_title(name)
    ax.set_yscale("symlog", linthresh=0.01)
  axes[0].set_ylabel("held-out CE − target's (nats/byte)")
  axes[0].legend()
  plotting.titled(fig, "Language-model decompositions: sparsity against "
                  "cross-entropy", (f"goal: ≤ {100 * FRACTION:.0f}% active, "
                                    f"masked pass within {GAP} nats/byte "
                                    f"(shaded)",))
  plotting.save(fig, path)


def write(rows: list[dict], out: str) -> dict:
  """`out.json` (rows and each method's best), `out.md`, `out.png`."""
  chosen = best(rows)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(dict(rows=rows, best=chosen, gap=GAP, fraction=FRACTION), f,
              indent=1)
  with open(out + ".md", "w") as f:
    f.write(table(rows))
  plot(rows, out + ".png")
  return chosen


def in_words(chosen: dict[str, dict | None]) -> list[str]:
  """Per method, in words, how far it gets toward the goal."""
  out = []
  for method, r in sorted(chosen.items()):
    if r is None:
      out.append(f"{method}: no run within {GAP} nats/byte")
      continue
    reached = r["l0_fraction"] <= FRACTION
    out.append(f"{method}: {100 * r['l0_fraction']:.1f}% active "
               f"({r['l0']:.1f} per position), masked pass "
               f"+{r['gap_masked']:.3f} nats/byte"
               f"{' (goal reached)' if reached else ''}")
  return out
