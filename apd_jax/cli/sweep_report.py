"""A sweep's results as tables and figures.

Rows are flat dicts, one per run: the run index, its swept values and its
final metrics. `write_table` gives them as CSV and Markdown; `by_setting`
pools the seeds of each setting (mean and spread of each metric, and the
fraction of seeds that succeed); `plot_sweep` draws each metric against one
swept value, every run a dot and each value's mean a line.
"""

from __future__ import annotations

import csv
import math
import statistics
from typing import Any
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from apd_jax.analysis import plotting  # noqa: E402

Row = dict[str, Any]


def fmt(v: Any) -> str:
  """A table cell: floats to 4 significant digits."""
  if isinstance(v, bool) or not isinstance(v, float):
    return str(v)
  if v == 0 or not math.isfinite(v) or 1e-3 <= abs(v) < 1e4:
    return f"{v:.4g}"
  return f"{v:.3e}"


def markdown(rows: Sequence[Row], columns: Sequence[str]) -> str:
  """A Markdown table of `rows` (missing cells empty)."""
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r[c]) if c in r else "" for c in columns)
            + " |" for r in rows]
  return "\n".join(lines) + "\n"


def write_table(rows: Sequence[Row], columns: Sequence[str], csv_path: str,
                md_path: str, *, heading: str = "",
                extra_md: str = "") -> None:
  """`rows` as CSV (full precision) and as Markdown (4 significant digits)."""
  with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  with open(md_path, "w") as f:
    if heading:
      f.write(heading + "\n\n")
    f.write(markdown(rows, columns))
    if extra_md:
      f.write("\n" + extra_md)


def by_setting(rows: Sequence[Row], swept: Sequence[str],
               metrics: Sequence[str], *, success: str | None = None,
               threshold: float = 0.0) -> list[Row]:
  """One row per setting of the non-seed swept values, pooling its seeds.

  Each metric `m` gets `m` (the mean over seeds) and `m_sd` (population
  standard deviation); with `success`, `success_frac` is the fraction of
  seeds whose `success` metric is at least `threshold`.
  """
  keys = [n for n in swept if n != "seed"]
  groups: dict[tuple, list[Row]] = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  out = []
  for values, group in groups.items():
    row = dict(zip(keys, values, strict=True), seeds=len(group))
    for m in metrics:
      vals = [float(r[m]) for r in group]
      row[m] = statistics.fmean(vals)       # nan if any is
      row[f"{m}_sd"] = (statistics.pstdev(vals)
                        if all(map(math.isfinite, vals)) else math.nan)
    if success is not None:
      row["success_frac"] = statistics.fmean(
          float(float(r[success]) >= threshold) for r in group)
    out.append(row)
  return out


def plot_sweep(rows: Sequence[Row], param: str, metrics: Sequence[str],
               path: str, *, hue: str | None = None) -> plt.Figure:
  """Each metric against the swept `param`, saved as PNG: every run a dot
  (coloured by the value of `hue`, if given), each `param` value's mean a
  line; log x axis when the values span 10× or more.

  Returns the (closed) figure, one axis per metric; each axis's scatter
  collections hold the runs in `rows` order (one collection per `hue` value).
  """
  values = sorted({r[param] for r in rows})
  hues = sorted({r[hue] for r in rows}) if hue else [None]
  cols = min(len(metrics), 4)
  nrows = math.ceil(len(metrics) / cols)
  fig, axes = plt.subplots(nrows, cols, squeeze=False,
                           figsize=(3.2 * cols, 2.8 * nrows))
  for ax, m in zip(axes.flat, metrics, strict=False):
    for h in hues:
      mine = [r for r in rows if hue is None or r[hue] == h]
      ax.scatter([r[param] for r in mine], [float(r[m]) for r in mine],
                 s=12, alpha=0.6, label=None if hue is None else f"{hue} {h}")
    means = [statistics.fmean(float(r[m]) for r in rows if r[param] == v)
             for v in values]
    ax.plot(values, means, "-o", color="k", ms=3, lw=1, label="mean")
    if min(values) > 0 and max(values) >= 10 * min(values):
      ax.set_xscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(m, fontsize=8)
    ax.set_title(m, fontsize=9)
  for ax in list(axes.flat)[len(metrics):]:
    ax.axis("off")
  axes[0][0].legend(fontsize=6)
  plotting.titled(fig, f"Each final metric against {param} over the sweep's "
                       f"{len(rows)} runs",
                  ("dots: one run each" + (f", coloured by {hue}" if hue
                                           else "") +
                   f"; black line: the mean over the runs at each {param}",))
  return plotting.save(fig, path)
