"""Figures a researcher looks at: the target's weights beside each component."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _arrows(ax, W, title, color, lim):
  """Columns of a `[2, J]` matrix as arrows from the origin."""
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
  """How the components split the target's columns, saved as PNG.

  With `target [2, J]` (TMS 5-2) every column (feature) is an arrow, the
  target's beside each component's, as in the paper's figure; components are
  ordered by Frobenius norm. Otherwise the target is shown as a heat map
  beside the matrix `||P_c[:, j]|| / ||W[:, j]||` (component × feature), rows
  ordered by each component's main feature: an ideal decomposition is a
  permutation matrix of ones, shrinkage shows as values below one.
  """
  target, P = np.asarray(target), np.asarray(P)
  fig = (_plot_arrows if target.shape[0] == 2 else _plot_shares)(target, P)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_arrows(target, P):
  order = np.argsort(-np.linalg.norm(P.reshape(len(P), -1), axis=1))
  panels = [("target W", target)] + [
      (f"component {c}  |P|={np.linalg.norm(P[c]):.2f}", P[c]) for c in order]
  cols = min(len(panels), 6)
  rows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows),
                           squeeze=False)
  cmap = plt.get_cmap("tab10" if target.shape[1] <= 10 else "viridis")
  color = lambda j: cmap(j if target.shape[1] <= 10  # noqa: E731
                         else j / max(target.shape[1] - 1, 1))
  lim = max(float(np.abs(target).max()), 1e-6) * 1.15  # one scale for all
  for ax, (name, W) in zip(axes.flat, panels, strict=False):
    _arrows(ax, W, name, color, lim)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  return fig


def _plot_shares(target, P):
  share = np.linalg.norm(P, axis=1) / np.linalg.norm(target, axis=0)[None]
  main = np.argmax(share, axis=1)
  order = np.lexsort((-share.max(axis=1), main))
  fig, (a, b) = plt.subplots(
      1, 2, figsize=(12, 4 + 0.06 * len(P)),
      gridspec_kw=dict(width_ratios=[1, 1.25]))
  vmax = float(np.abs(target).max()) or 1.0
  a.imshow(target, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto",
           interpolation="nearest")
  a.set_title("target W", fontsize=9)
  a.set_xlabel("feature j")
  im = b.imshow(share[order], cmap="magma_r", vmin=0, vmax=1.2,
                aspect="auto", interpolation="nearest")
  b.set_yticks(range(len(P)), [str(c) for c in order], fontsize=5)
  b.set_xlabel("feature j")
  b.set_ylabel("component")
  b.set_title("||P_c[:, j]|| / ||W[:, j]||", fontsize=9)
  fig.colorbar(im, ax=b, fraction=0.04)
  return fig


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
