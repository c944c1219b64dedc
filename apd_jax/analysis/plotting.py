"""Figures a researcher looks at, each readable without the paper.

Every figure says what it shows in its title, defines its metrics in a
line under the title, labels its axes, has a legend or colour bar, states
the scale where panels are compared, and puts integer ticks on integer
axes. Each function saves a PNG and returns the (closed) figure, so its
texts can be read back.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# The loss terms of either method, as the history names them, and what
# each is.
TERMS = {
    "loss": "total: Σ coefficient × term (the terms below unweighted)",
    "faithfulness": "faithfulness: mean (θ* − Σ_c P_c)²",
    "minimality": "minimality: top-k reconstruction",
    "hidden_act": "hidden activations' top-k reconstruction",
    "simplicity": "simplicity: Schatten-p of active components",
    "stochastic": "stochastic reconstruction",
    "layerwise": "layerwise stochastic reconstruction",
    "importance": "importance minimality: Σ G^p",
}
MMCS_ML2R = ("MMCS: mean over features j of max_c cos(P_c[:, j], W[:, j]);  "
             "ML2R: mean over j of ‖P_c*[:, j]‖ / ‖W[:, j]‖ for that best c*")


def titled(fig, title: str, notes: tuple[str, ...] = (), *,
           rect_bottom: float = 0.0, colorbar: str | None = None, im=None
           ) -> None:
  """`title` on top of `fig` (its first text), each of `notes` in a small
  line under it (the next texts), and the axes laid out below them; with
  `colorbar` (its label), one colour bar of the image `im` on the right."""
  h = fig.get_figheight()
  fig.text(0.5, 1 - 0.1 / h, title, ha="center", va="top", fontsize=10)
  for i, note in enumerate(notes):
    fig.text(0.5, 1 - (0.38 + 0.2 * i) / h, note, ha="center", va="top",
             fontsize=7.5, color="0.25")
  top = 1 - (0.4 + 0.2 * len(notes)) / h
  right = 1 - 1.0 / fig.get_figwidth() if colorbar else 1
  fig.tight_layout(rect=(0, rect_bottom, right, top))
  if colorbar:
    bottom = rect_bottom + 0.6 / h
    cax = fig.add_axes((right + 0.15 / fig.get_figwidth(), bottom,
                        0.12 / fig.get_figwidth(), top - 0.1 / h - bottom),
                       label="<colorbar>")
    fig.colorbar(im, cax=cax, label=colorbar)


def save(fig, path: str):
  """Writes `fig` to `path` (PNG), closes it and returns it."""
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return fig


def integer_ticks(ax, *, x: bool = True, y: bool = True) -> None:
  """Only integer tick positions on the chosen axes."""
  if x:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  if y:
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def plot_columns(target: np.ndarray, P: np.ndarray, path: str, *,
                 title: str = "", column: str = "column",
                 metrics: dict | None = None):
  """How the components split the target's columns `W[:, j]`, as PNG.

  With `target [2, J]` (TMS 5-2) every column is an arrow in the plane of
  the 2 rows, the target's beside each component's, as in the paper's
  figure (colours: columns, with a legend; panels ordered by `‖P_c‖_F`, on
  one scale). Otherwise the target is a heat map beside the matrix
  `‖P_c[:, j]‖ / ‖W[:, j]‖` (component × column), rows ordered by each
  component's main column: an ideal decomposition is a permutation matrix
  of ones, shrinkage shows as values below one. `column` names what a
  column is ("feature" for TMS, "output unit" for a kernel `[in, out]`);
  `metrics` (e.g. MMCS, ML2R) go in the title and are defined under it.
  """
  target, P = np.asarray(target), np.asarray(P)
  arrows = target.shape[0] == 2
  fig = (_plot_arrows if arrows else _plot_shares)(target, P, column)
  head = title or f"Target columns beside each component's ({column}s)"
  notes = []
  if metrics:
    head += ": " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    if {"MMCS", "ML2R"} & set(metrics):
      notes.append(MMCS_ML2R)
  notes.append(
      f"each arrow is one {column}'s column W[:, j] in the 2-d row space; "
      f"components ordered by ‖P_c‖_F (largest first), all panels on one "
      f"scale" if arrows else
      f"right: ‖P_c[:, j]‖ / ‖W[:, j]‖, how much of {column} j's column "
      f"component c holds (1: all of it); rows ordered by the {column} each "
      f"holds most of")
  titled(fig, head, tuple(notes), rect_bottom=0.1 if arrows else 0.0)
  return save(fig, path)


def _plot_arrows(target, P, column):
  order = np.argsort(-np.linalg.norm(P.reshape(len(P), -1), axis=1))
  panels = [("target W", target)] + [
      (f"component {c}: ‖P‖ = {np.linalg.norm(P[c]):.2f}", P[c])
      for c in order]
  cols = min(len(panels), 6)
  rows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.6 * rows + 1.3),
                           squeeze=False)
  J = target.shape[1]
  cmap = plt.get_cmap("tab10" if J <= 10 else "viridis")
  color = lambda j: cmap(j if J <= 10 else j / max(J - 1, 1))  # noqa: E731
  lim = max(float(np.abs(target).max()), 1e-6) * 1.15  # one scale for all
  for ax, (name, W) in zip(axes.flat, panels, strict=False):
    for j in range(J):
      ax.annotate("", xy=(W[0, j], W[1, j]), xytext=(0, 0),
                  arrowprops=dict(arrowstyle="->", color=color(j), lw=1.8))
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    ax.axhline(0, color="0.85", lw=0.5)
    ax.axvline(0, color="0.85", lw=0.5)
    ax.set_title(name, fontsize=8)
    ticks = [-round(lim / 1.15, 2), 0, round(lim / 1.15, 2)]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.tick_params(labelsize=6)
    ax.set_xlabel("W[0, j]", fontsize=7)
    ax.set_ylabel("W[1, j]", fontsize=7)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  if J <= 10:
    fig.legend([Line2D([], [], color=color(j), lw=2) for j in range(J)],
               [f"{column} {j}" for j in range(J)], loc="lower center",
               ncol=J, fontsize=7, frameon=False)
  return fig


def _plot_shares(target, P, column):
  share = np.linalg.norm(P, axis=1) / np.maximum(
      np.linalg.norm(target, axis=0), 1e-12)[None]
  main = np.argmax(share, axis=1)
  order = np.lexsort((-share.max(axis=1), main))
  fig, (a, b) = plt.subplots(
      1, 2, figsize=(12, 4.6 + 0.06 * len(P)),
      gridspec_kw=dict(width_ratios=[1, 1.25]))
  vmax = float(np.abs(target).max()) or 1.0
  im = a.imshow(target, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto",
                interpolation="nearest")
  fig.colorbar(im, ax=a, fraction=0.04, label="weight W[i, j]")
  a.set_title("target W", fontsize=9)
  a.set_xlabel(f"{column} j (column of W)")
  a.set_ylabel("row i of W")
  integer_ticks(a)
  im = b.imshow(share[order], cmap="magma_r", vmin=0, vmax=1.2,
                aspect="auto", interpolation="nearest")
  b.set_yticks(range(len(P)), [str(c) for c in order], fontsize=5)
  b.set_xlabel(f"{column} j")
  b.set_ylabel("component c (id)")
  integer_ticks(b, y=False)
  b.set_title("share of each column held by each component", fontsize=9)
  fig.colorbar(im, ax=b, fraction=0.04, label="‖P_c[:, j]‖ / ‖W[:, j]‖")
  return fig


def plot_history(history: list[dict], path: str):
  """The loss terms over training (log scale, one point per log, each term
  named; the total is their weighted sum, the terms unweighted) above L0
  (where the history has it), saved as PNG; None without history."""
  if not history:
    return None
  steps = [r["step"] for r in history]
  every = steps[1] - steps[0] if len(steps) > 1 else steps[0]
  keys = [k for k in TERMS if k in history[0]]
  if "l0" not in history[0]:
    fig, ax = plt.subplots(figsize=(7, 4.4))
    _plot_terms(ax, steps, history, keys)
    ax.set_xlabel("training step")
    titled(fig, "Loss terms during training",
           (f"one point per log: the mean over the {every} steps before it",))
    return save(fig, path)
  fig, (ax, bx) = plt.subplots(2, 1, figsize=(7, 6.2), sharex=True,
                               gridspec_kw=dict(height_ratios=[2.2, 1]))
  _plot_terms(ax, steps, history, keys)
  bx.plot(steps, [r["l0"] for r in history], color="k", lw=1.2)
  bx.set_ylabel("L0: active\ncomponents / example")
  bx.set_xlabel("training step")
  integer_ticks(bx, y=False)
  titled(fig, "Loss terms and L0 during training",
         (f"one point per log: the mean over the {every} steps before it; "
          f"final L0 {history[-1]['l0']:.3f}",))
  return save(fig, path)


def _plot_terms(ax, steps, history, keys) -> None:
  for k in keys:
    ax.plot(steps, [max(r[k], 1e-12) for r in history], lw=1.2,
            label=TERMS[k], marker="." if len(steps) < 30 else None)
  ax.set_yscale("log")
  ax.set_ylabel("loss term (log scale)")
  ax.legend(fontsize=7)


def plot_causal_importances(G: dict, path: str, *, threshold: float = 0.1,
                            xlabel: str = "input (one-hot)"):
  """SPD: each product's causal importances `G [inputs, C_l]` as a heat map
  (inputs × subcomponents), showing the subcomponents with G above
  `threshold` on some input (ordered by the input where each peaks), saved
  as PNG. A clean decomposition is one bright cell per row."""
  fig, axes = plt.subplots(1, len(G), figsize=(4.4 * len(G) + 1.2, 4.2),
                           squeeze=False)
  for ax, (label, g) in zip(axes[0], G.items(), strict=True):
    g = np.asarray(g).reshape(-1, np.asarray(g).shape[-1])
    alive = np.flatnonzero(g.max(axis=0) > threshold)
    alive = alive[np.argsort(g[:, alive].argmax(axis=0), kind="stable")]
    im = ax.imshow(g[:, alive] if alive.size else np.zeros((g.shape[0], 1)),
                   vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_title(f"{label}: {alive.size} of {g.shape[1]} above "
                 f"{threshold:g}", fontsize=9)
    ax.set_xlabel("subcomponent (id)", fontsize=8)
    ax.set_ylabel(xlabel, fontsize=8)
    ax.set_xticks(range(alive.size), [str(c) for c in alive], fontsize=6)
    ax.set_yticks(range(g.shape[0]))
    ax.tick_params(axis="y", labelsize=6)
  titled(fig, "Causal importance G of each subcomponent on each input",
         (f"G in [0, 1]: how much of the subcomponent the output needs on "
          f"this input; only subcomponents with G > {threshold:g} on some "
          f"input shown, ordered by the input where they peak",),
         colorbar="causal importance G", im=im)
  return save(fig, path)


def plot_contributions(kappa, best_kappa, cosine, path: str):
  """Neuron contributions per feature: target beside each feature's best
  component (rows: features; columns: neurons) on one colour scale, and
  the cosine of each row pair, saved as PNG."""
  kappa, best_kappa = np.asarray(kappa), np.asarray(best_kappa)
  cosine = np.asarray(cosine)
  vmax = float(np.abs(kappa).max()) or 1.0
  ratio = np.linalg.norm(best_kappa, axis=1) / np.maximum(
      np.linalg.norm(kappa, axis=1), 1e-12)
  fig, axes = plt.subplots(1, 3, figsize=(14, 6.6),
                           gridspec_kw=dict(width_ratios=[1, 1, 0.3]))
  for ax, data, name in ((axes[0], kappa, "target"),
                         (axes[1], best_kappa, "its best component")):
    im = ax.imshow(data, cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                   aspect="auto", interpolation="nearest")
    ax.set_title(f"{name}: κ[feature, neuron]", fontsize=9)
    ax.set_xlabel("MLP neuron n")
    ax.set_ylabel("input feature f")
    integer_ticks(ax)
    fig.colorbar(im, ax=ax, fraction=0.04,
                 label=f"contribution κ (both panels ±{vmax:.3g})")
  axes[2].barh(np.arange(len(cosine)), cosine, height=1.0,
               color=np.where(cosine >= 0.9, "tab:green", "tab:red"))
  axes[2].axvline(0.9, color="k", lw=0.8, ls="--")
  axes[2].set_ylim(len(cosine) - 0.5, -0.5)
  axes[2].set_xlim(min(0.0, float(cosine.min())), 1.0)
  axes[2].set_xlabel("cosine(target row, component row)", fontsize=8)
  axes[2].set_ylabel("input feature f")
  integer_ticks(axes[2], x=False)
  axes[2].set_title(f"{int(np.sum(cosine >= 0.9))}/{len(cosine)} ≥ 0.9",
                    fontsize=9)
  titled(fig, "Neuron contributions of each input feature: target vs the "
              "feature's best component",
         ("κ[f, n] = (e_f W_in)_n · (W_out e_fᵀ)_n: how much neuron n reads "
          "feature f and writes it back",
          f"one colour scale for both panels; the component's rows have "
          f"{np.median(ratio):.2f}× the target's norm (median over features)"
          f"; green: cosine ≥ 0.9 (recovered)"))
  return save(fig, path)


def plot_scrubbing(losses: dict, path: str):
  """Histograms of per-example task losses (log scale): top-k, scrubbed,
  anti-scrubbed, with the monosemantic baseline's mean as a line."""
  lo = min(max(float(np.min(v)), 1e-9) for v in losses.values())
  hi = max(float(np.max(v)) for v in losses.values())
  bins = np.logspace(np.log10(lo), np.log10(max(hi, lo * 10)), 60)
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
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
  ax.set_xlabel("per-example task loss (MSE to the labels, log scale)")
  ax.set_ylabel("examples (count)")
  ax.legend(fontsize=7)
  titled(fig, "Task loss when half the components are switched off",
         ("scrubbed: a random half off, never those of the active features; "
          "anti-scrubbed: those first; dotted: means",))
  return save(fig, path)


def plot_function_components(norms, neuron_fns, scores, path: str):
  """One panel per component: each neuron's weight norm in it, coloured by
  the function the neuron serves; titles give the best-matching function
  and its cosine."""
  norms, neuron_fns = np.asarray(norms), np.asarray(neuron_fns)
  scores = np.asarray(scores)                       # [n_functions, C]
  n = len(norms)
  cols = min(n, 4)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows + 1),
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
    integer_ticks(ax, y=False)
    if c % cols == 0:
      ax.set_ylabel("‖neuron's weights‖", fontsize=7)
  handles = [plt.Rectangle((0, 0), 1, 1, color=plt.get_cmap("tab10")(f % 10))
             for f in range(int(neuron_fns.max()) + 1)]
  fig.legend(handles, [f"F{f}" for f in range(len(handles))], fontsize=7,
             loc="lower center", ncol=len(handles),
             title="function the neuron serves", title_fontsize=7)
  titled(fig, "Each component's weight on each neuron, coloured by the "
              "function the neuron serves",
         ("title: the function whose weights the component's are closest to "
          "(cosine); a clean component uses one colour only",),
         rect_bottom=0.08)
  return save(fig, path)
