"""Figures a researcher looks at: the target's weights beside each component."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _arrows(ax, W, title, color):
  """Columns of a `[2, J]` matrix as arrows from the origin."""
  lim = max(float(np.abs(W).max()), 1e-6) * 1.15
  for j in range(W.shape[1]):
    ax.annotate("", xy=(W[0, j], W[1, j]), xytext=(0, 0),
                arrowprops=dict(arrowstyle="->", color=color(j), lw=1.8))
  ax.set_xlim(-lim, lim)
  ax.set_ylim(-lim, lim)
  ax.set_aspect("equal")
  ax.axhline(0, color="0.85", lw=0.5)
  ax.axvline(0, color="0.85", lw=0.5)
  ax.set_title(title, fontsize=9)
  ax.set_xticks([])
  ax.set_yticks([])


def plot_columns(target: np.ndarray, P: np.ndarray, path: str, *,
                 title: str = "") -> None:
  """Target `W [i, J]` beside each component `P_c [i, J]`, saved as PNG.

  With i = 2 every column (feature) is an arrow, as in the paper's TMS 5-2
  figure; otherwise each matrix is a heat map on one colour scale. Components
  are ordered by their Frobenius norm, largest first.
  """
  target, P = np.asarray(target), np.asarray(P)
  order = np.argsort(-np.linalg.norm(P.reshape(len(P), -1), axis=1))
  panels = [("target W", target)] + [
      (f"component {c}  |P|={np.linalg.norm(P[c]):.2f}", P[c]) for c in order]
  cols = min(len(panels), 6)
  rows = math.ceil(len(panels) / cols)
  arrows = target.shape[0] == 2
  size = 2.4 if arrows else 2.8
  fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows),
                           squeeze=False)
  cmap = plt.get_cmap("tab10" if target.shape[1] <= 10 else "viridis")
  color = lambda j: cmap(j if target.shape[1] <= 10  # noqa: E731
                         else j / max(target.shape[1] - 1, 1))
  vmax = float(np.abs(target).max()) or 1.0
  for ax, (name, W) in zip(axes.flat, panels, strict=False):
    if arrows:
      _arrows(ax, W, name, color)
    else:
      ax.imshow(W, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto",
                interpolation="nearest")
      ax.set_title(name, fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (size * rows)))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_history(history: list[dict], path: str) -> None:
  """The loss terms over training (log scale), saved as PNG."""
  if not history:
    return
  steps = [r["step"] for r in history]
  keys = [k for k in ("loss", "faithfulness", "minimality", "hidden_act",
                      "simplicity") if k in history[0]]
  fig, ax = plt.subplots(figsize=(6, 3.8))
  for k in keys:
    ax.plot(steps, [max(r[k], 1e-12) for r in history], label=k)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_title(f"final mean active components per example (L0): "
               f"{history[-1]['l0']:.3f}", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
