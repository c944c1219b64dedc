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
                      "simplicity", "stochastic", "layerwise", "importance")
          if k in history[0]]
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


def plot_causal_importances(G: dict, path: str, *, threshold: float = 0.1,
                            xlabel: str = "input (one-hot)") -> None:
  """SPD: each product's causal importances `G [inputs, C_l]` as a heat map
  (inputs × subcomponents), showing the subcomponents with G above
  `threshold` on some input (ordered by the input where each peaks), saved
  as PNG. A clean decomposition is one bright cell per row."""
  fig, axes = plt.subplots(1, len(G), figsize=(4.2 * len(G) + 1, 3.4),
                           squeeze=False)
  for ax, (label, g) in zip(axes[0], G.items(), strict=True):
    g = np.asarray(g).reshape(-1, np.asarray(g).shape[-1])
    alive = np.flatnonzero(g.max(axis=0) > threshold)
    alive = alive[np.argsort(g[:, alive].argmax(axis=0), kind="stable")]
    im = ax.imshow(g[:, alive] if alive.size else np.zeros((g.shape[0], 1)),
                   vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_title(f"{label}: {alive.size} of {g.shape[1]} active", fontsize=9)
    ax.set_xlabel("alive subcomponent")
    ax.set_ylabel(xlabel)
    ax.set_xticks(range(alive.size), [str(c) for c in alive], fontsize=6)
    ax.set_yticks(range(g.shape[0]))
    ax.tick_params(axis="y", labelsize=6)
  fig.colorbar(im, ax=axes[0].tolist(), label="causal importance G")
  fig.suptitle("causal importance of each alive subcomponent on each input "
               "(columns ordered by the input where they peak)", fontsize=9)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_contributions(kappa, best_kappa, cosine, path: str) -> None:
  """Neuron contributions per feature: target beside each feature's best
  component (rows: features; columns: neurons), saved as PNG."""
  kappa, best_kappa = np.asarray(kappa), np.asarray(best_kappa)
  vmax = float(np.abs(kappa).max()) or 1.0
  fig, axes = plt.subplots(1, 3, figsize=(13, 6),
                           gridspec_kw=dict(width_ratios=[1, 1, 0.25]))
  for ax, data, title in ((axes[0], kappa, "target"),
                          (axes[1], best_kappa, "best component")):
    im = ax.imshow(data, cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                   aspect="auto", interpolation="nearest")
    ax.set_title(f"{title}: neuron contributions", fontsize=9)
    ax.set_xlabel("neuron")
    ax.set_ylabel("input feature")
  fig.colorbar(im, ax=axes[1], fraction=0.04)
  cosine = np.asarray(cosine)
  axes[2].barh(np.arange(len(cosine)), cosine, height=1.0,
               color=np.where(cosine >= 0.9, "tab:green", "tab:red"))
  axes[2].axvline(0.9, color="k", lw=0.8, ls="--")
  axes[2].set_ylim(len(cosine) - 0.5, -0.5)
  axes[2].set_xlim(min(0.0, float(cosine.min())), 1.0)
  axes[2].set_title(f"cosine ({int(np.sum(cosine >= 0.9))}/{len(cosine)} "
                    f"≥ 0.9)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_scrubbing(losses: dict, path: str) -> None:
  """Histograms of per-example task losses (log scale): top-k, scrubbed,
  anti-scrubbed, with the monosemantic baseline's mean as a line."""
  lo = min(max(float(np.min(v)), 1e-9) for v in losses.values())
  hi = max(float(np.max(v)) for v in losses.values())
  bins = np.logspace(np.log10(lo), np.log10(max(hi, lo * 10)), 60)
  fig, ax = plt.subplots(figsize=(7, 4))
  for k, color in (("topk", "tab:gray"), ("scrubbed", "tab:blue"),
                   ("anti_scrubbed", "tab:red")):
    v = np.maximum(np.asarray(losses[k]), lo)
    ax.hist(v, bins=bins, histtype="step", color=color,
            label=f"{k} (mean {np.mean(losses[k]):.2e})")
    ax.axvline(np.mean(losses[k]), color=color, lw=0.8, ls=":")
  mono = float(np.mean(losses["monosemantic"]))
  ax.axvline(mono, color="k", lw=1.0, ls="--",
             label=f"monosemantic baseline (mean {mono:.2e})")
  ax.set_xscale("log")
  ax.set_xlabel("per-example task loss (MSE to labels)")
  ax.set_ylabel("examples")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_function_components(norms, neuron_fns, scores, path: str) -> None:
  """One panel per component: each neuron's weight norm in it, coloured by
  the function the neuron serves; titles give the best-matching function
  and its cosine."""
  norms, neuron_fns = np.asarray(norms), np.asarray(neuron_fns)
  scores = np.asarray(scores)                       # [n_functions, C]
  n = len(norms)
  cols = min(n, 4)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows),
                           squeeze=False, sharey=True)
  colors = plt.get_cmap("tab10")(neuron_fns % 10)
  for c, ax in enumerate(axes.flat):
    if c >= n:
      ax.axis("off")
      continue
    ax.bar(np.arange(norms.shape[1]), norms[c], color=colors, width=1.0)
    f = int(np.argmax(scores[:, c]))
    ax.set_title(f"component {c}: F{f} (cos {scores[f, c]:.2f})",
                 fontsize=8)
    ax.set_xlabel("neuron (all layers)", fontsize=7)
  handles = [plt.Rectangle((0, 0), 1, 1, color=plt.get_cmap("tab10")(f % 10))
             for f in range(int(neuron_fns.max()) + 1)]
  fig.legend(handles, [f"F{f}" for f in range(len(handles))], fontsize=7,
             loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
