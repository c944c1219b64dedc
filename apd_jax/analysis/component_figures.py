"""Figures of what each component does: how often it fires, and its top
inputs (`analysis.summary`), for any decomposition of vector inputs."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from apd_jax.analysis import plotting
from apd_jax.analysis.plotting import plt


def plot_summary(summary, path: str):
  """Per group (APD: all components; SPD: each product), every component's
  firing frequency (log scale, most frequent first; dead ones at the
  bottom in grey, always-on ones in red), saved as PNG."""
  groups = {}
  for c in summary.components:
    groups.setdefault(c.group, []).append(c)
  cols = 1 if len(groups) <= 3 else 2
  rows = math.ceil(len(groups) / cols)
  fig, axes = plt.subplots(rows, cols, squeeze=False,
                           figsize=(8 * cols, 2.6 * rows + 1.2))
  for ax in axes.flat[len(groups):]:
    ax.axis("off")
  floor = 0.5 / summary.n_examples
  for ax, (g, comps) in zip(axes.flat, groups.items(), strict=False):
    comps = sorted(comps, key=lambda c: (-c.frequency, c.index))
    freq = np.array([max(c.frequency, floor) for c in comps])
    colour = ["0.7" if c.status == "dead" else "tab:red"
              if c.status == "always on" else "tab:blue" for c in comps]
    ax.bar(np.arange(len(comps)), freq, color=colour, width=0.8)
    ax.set_yscale("log")
    ax.set_ylim(floor * 0.8, 1.5)
    ax.set_ylabel("firing frequency\n(log scale)", fontsize=8)
    ax.set_xlabel("component (id), most frequent first", fontsize=8)
    ax.set_xticks(np.arange(len(comps)), [str(c.index) for c in comps],
                  fontsize=6 if len(comps) <= 40 else 4, rotation=90)
    n_dead = sum(c.status == "dead" for c in comps)
    ax.set_title(f"{g or 'all components'}: {len(comps) - n_dead} of "
                 f"{len(comps)} alive", fontsize=9)
  handles = [plt.Rectangle((0, 0), 1, 1, color=c)
             for c in ("tab:blue", "tab:red", "0.7")]
  fig.legend(handles, ["alive", "always on (≥ 99%)", "dead (never)"],
             loc="lower center", ncol=3, fontsize=7)
  what = summary.active
  plotting.titled(fig, f"How often each component is active "
                       f"({summary.method}, {summary.n_examples} fresh "
                       f"examples)",
                  (f"firing frequency: the fraction of examples on which "
                   f"the component is active ({what})",), rect_bottom=0.06)
  return plotting.save(fig, path)


def plot_top_inputs(tops: Sequence, path: str, *, max_components: int = 16,
                    what: str = "attribution"):
  """Each component's top inputs (rows, highest score first) as a heat map
  over the input's entries, all panels on one colour scale, saved as PNG;
  the components shown are the `max_components` most frequent (the title
  says how many of how many)."""
  n_all = len(tops)
  tops = sorted(tops, key=lambda t: -t.frequency)[:max_components]
  if not tops:
    return None
  shown = (f"all {n_all} components with top inputs" if n_all == len(tops)
           else f"the {len(tops)} most frequent of {n_all} components with "
                f"top inputs")
  cols = min(len(tops), 4)
  rows = math.ceil(len(tops) / cols)
  fig, axes = plt.subplots(rows, cols, squeeze=False,
                           figsize=(3.4 * cols + 1, 2.3 * rows + 1.2))
  vmax = max(float(np.abs(t.inputs).max()) for t in tops) or 1.0
  for ax, t in zip(axes.flat, tops, strict=False):
    x = t.inputs.reshape(len(t.inputs), -1)
    im = ax.imshow(x, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    name = f"{t.group} " if t.group else ""
    ax.set_title(f"{name}c{t.index}: freq {t.frequency:.3f}, ablation "
                 f"{np.mean(t.ablation):.2g}", fontsize=7)
    ax.set_xlabel("input entry (index)", fontsize=7)
    ax.set_ylabel("rank", fontsize=7)
    plotting.integer_ticks(ax)
    ax.tick_params(labelsize=6)
  for ax in list(axes.flat)[len(tops):]:
    ax.axis("off")
  plotting.titled(
      fig, f"Top inputs of {shown} (rows: the examples with the highest "
           f"{what}, highest first)",
      (f"freq: fraction of examples on which it is active; ablation: mean "
       f"reconstruction loss between outputs with all components on and with "
       f"this one off, on these inputs; one colour scale (±{vmax:.3g})",),
      colorbar="input value", im=im)
  return plotting.save(fig, path)
