"""What each component does, for any decomposition of any model.

    s = result.summary(sample_fn)          # = summarize(result, sample_fn, key)
    print(s.table())                       # one row per component
    s.to_dict(); s.markdown()              # for summary.json / summary.md
    tops = top_inputs(result, sample_fn, key, k=8)

A component is *active* on an example where its method says so
(`method.active`; APD: in the top-k mask; SPD: causal importance above the
threshold, `G > 0.1`). On fresh examples from `sample_fn`, per component:

  frequency      fraction of examples on which it is active;
  mean score     mean score (`method.SCORE`: APD's attribution `A_c(x)²`,
                 SPD's `G`) when active;
  norm           `‖P_{c,l}‖_F` per decomposed leaf l (SPD: `‖u_c‖ ‖v_c‖`);
  eff. rank      `exp(H(σ / Σσ))`, σ the singular values of `P_{c,l}`
                 (1 for a rank-one matrix, r for r equal singular values,
                 0 for a zero matrix);
  status         `dead` (never active) or `always on` (frequency ≥ 0.99).

Components come in the method's groups (`Decomposition.groups`): APD's span
every decomposed leaf (one group, `''`); SPD's belong to one product each
(a group per product). Top inputs are the
examples with the highest score, each with the cost of switching the
component off there (the method's reconstruction loss, MSE or KL, between
the output with every component on and with all but this one).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from apd_jax.core import losses

Array = jax.Array
ALWAYS_ON = 0.99
MAX_BYTES = 256 * 2**20   # top inputs' passes: bytes of outputs at a time


@dataclasses.dataclass(frozen=True)
class Component:
  """One row of a `Summary`."""
  group: str                      # the method's group ('' for APD)
  index: int
  frequency: float
  mean_score: float               # nan when never active
  norm: dict[str, float]
  effective_rank: dict[str, float]
  status: str                     # 'dead', 'always on' or ''


@dataclasses.dataclass(frozen=True)
class Summary:
  """Per-component statistics of a decomposition on fresh examples."""
  method: str
  score: str                      # what `mean_score` is
  n_examples: int
  components: tuple[Component, ...]
  totals: dict[str, float]
  active: str = "active"          # when a component counts as active

  def counts(self) -> dict[str, dict[str, int]]:
    """`{group: {total, alive, dead, always_on}}`."""
    out = {}
    for c in self.components:
      g = out.setdefault(c.group or "all", dict(total=0, alive=0, dead=0,
                                                 always_on=0))
      g["total"] += 1
      g["dead" if c.status == "dead" else "alive"] += 1
      g["always_on"] += c.status == "always on"
    return out

  def _rows(self, alive_only: bool) -> tuple[list[str], list[list[str]]]:
    """Columns: per leaf norm and rank where components span the leaves
    (one unnamed group, APD); else the group and one norm and rank."""
    spd = any(c.group for c in self.components)
    leaves = [""] if spd else list(dict.fromkeys(
        n for c in self.components for n in c.norm))
    head = (["product"] if spd else []) + [
        "c", "frequency", f"mean {self.score}"] + [
            f"{k} {short_name(n)}".strip() for n in leaves
            for k in ("norm", "eff.rank")] + ["status"]
    rows = []
    for c in sorted(self.components, key=lambda c: (c.group, -c.frequency,
                                                    c.index)):
      if alive_only and c.status == "dead":
        continue
      mean = "–" if c.status == "dead" else _num(c.mean_score)
      cells = ([short_name(c.group)] if spd else []) + [
          str(c.index), f"{c.frequency:.4f}", mean]
      for n in ([next(iter(c.norm))] if spd else leaves):
        cells += ([_num(c.norm[n]), f"{c.effective_rank[n]:.2f}"]
                  if n in c.norm else ["", ""])
      rows.append(cells + [c.status])
    return head, rows

  def _header(self) -> list[str]:
    totals = "  ".join(f"{k} {_num(v)}" for k, v in self.totals.items())
    counts = "; ".join(
        f"{g}: {n['alive']} of {n['total']} alive, {n['always_on']} always "
        f"on" for g, n in self.counts().items())
    return [f"{self.method} decomposition on {self.n_examples} fresh "
            f"examples ({counts})", totals]

  def table(self, max_rows: int = 40) -> str:
    """A plain-text table of the alive components (most frequent first),
    after the totals; dead ones are counted, not listed."""
    head, rows = self._rows(alive_only=True)
    more = len(rows) - max_rows
    rows = rows[:max_rows]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(  # noqa: E731
        v.rjust(w) for v, w in zip(r, widths, strict=True))
    lines = self._header() + [fmt(head)] + [fmt(r) for r in rows]
    if more > 0:
      lines.append(f"... {more} more alive components (see summary.md)")
    return "\n".join(lines)

  def markdown(self, tops: list[TopInputs] | None = None) -> str:
    """Every component as a Markdown table, after the totals (and, given
    `tops`, each component's top inputs)."""
    head, rows = self._rows(alive_only=False)
    lines = ["# Decomposition summary", "", *[f"{h}  " for h in
                                              self._header()], "",
             _DEFINITIONS.format(active=self.active, score=self.score), "",
             "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if tops:
      lines += ["", "## Top inputs", "",
                f"The examples with the highest {self.score}, with the "
                f"reconstruction loss of switching the component off on "
                f"each.", ""]
      for t in sorted(tops, key=lambda t: (t.group, -t.frequency)):
        name = f"{t.group} " if t.group else ""
        lines.append(f"- **{name}c{t.index}** (frequency {t.frequency:.4f})"
                     + "".join(f"\n  - {describe_input(x)}: {self.score} "
                               f"{_num(float(v))}, ablation {_num(float(a))}"
                               for x, v, a in zip(t.inputs, t.scores,
                                                  t.ablation, strict=True)))
    return "\n".join(lines) + "\n"

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: totals, counts and one dict per component."""
    return dict(method=self.method, score=self.score, active=self.active,
                n_examples=self.n_examples, totals=dict(self.totals),
                counts=self.counts(),
                components=[dataclasses.asdict(c) for c in self.components])


_DEFINITIONS = (
    "*frequency*: fraction of examples on which the component is active "
    "({active}); *mean score*: its mean {score} when active; "
    "*norm*: ‖P_c‖_F per decomposed matrix; *eff.rank*: exp of the entropy "
    "of P_c's normalised singular values; *dead*: never active; "
    "*always on*: active on ≥ 99% of examples.")


def short_name(name: str) -> str:
  """A leaf's keystr as a short path: `['params']['block_0']['out']
  ['kernel']` -> `block_0/out/kernel` (a Flax `params` root dropped; a
  `#j` suffix kept)."""
  base, hash_, j = name.partition("#")
  parts = re.findall(r"\[(?:'([^']*)'|(\d+))\]|\.(\w+)", base)
  keys = [a or b or c for a, b, c in parts]
  if not keys:
    return name
  if len(keys) > 1 and keys[0] == "params":
    keys = keys[1:]
  return "/".join(keys) + hash_ + j


def _num(v: float) -> str:
  return "nan" if v is None or not math.isfinite(v) else f"{v:.4g}"


def factor_spectrum(U: Array, V: Array) -> Array:
  """Singular values `[C, k]` of each `P_c = U_c V_c` (`U [C, i, m]`,
  `V [C, m, o]`) from the factors: with `U_c = Q_u R_u` and
  `V_cᵀ = Q_v R_v`, `σ(P_c) = σ(R_u R_vᵀ)`, a `[k, k]` problem."""
  def one(u, v):
    r_u = jnp.linalg.qr(u, mode="r")
    r_v = jnp.linalg.qr(v.T, mode="r")
    return jnp.linalg.svd(r_u @ r_v.T, compute_uv=False)
  return jax.vmap(one)(U, V)


def effective_rank(sigma: Array) -> Array:
  """`exp(H(p))` with `p = σ / Σσ` over the last axis (0 where σ = 0)."""
  total = jnp.sum(sigma, axis=-1, keepdims=True)
  p = sigma / jnp.where(total > 0, total, 1.0)
  h = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0),
               axis=-1)
  return jnp.where(total[..., 0] > 0, jnp.exp(h), 0.0)


def activity(result, x: Array, *, per_pass: int | None = None
             ) -> dict[str, tuple[Array, Array]]:
  """`{group: (active [N, C_g] bool, score [N, C_g])}` on the batch `x`;
  `N = B·T` where the method scores each of T positions of an example (SPD
  on sequences, APD with `per_position`: position `t` of example `b` is
  row `b·T + t`). Computed `per_pass` examples at a time if given (both
  are per example, so the answer is the same)."""
  scores, active = _in_passes(
      lambda v: (result.scores(v), result.active(v)), x, per_pass)
  return {g: (active[g].reshape(-1, s.shape[-1]), s.reshape(-1, s.shape[-1]))
          for g, s in scores.items()}


def examples_per_pass(result, x: Array, max_bytes: int) -> int:
  """How many examples' passes fit in `max_bytes`: an ablation holds two
  outputs per example (every component on, one off), each counted in
  float32 or wider, e.g. 2 · T · V · 4 bytes for a window of T tokens of
  a vocabulary of V; at least 1."""
  out = jax.eval_shape(lambda v: result.target.batch(v)[0], x[:1])
  size = math.prod(out.shape[1:]) * max(jnp.dtype(out.dtype).itemsize, 4)
  return max(1, int(max_bytes) // (2 * size))


def _in_passes(fn, x: Array, size: int | None):
  """`fn(x)` for a per-example `fn` (a pytree of arrays `[B, ...]`), run on
  `size` examples at a time and concatenated. Every pass has one shape
  (the last one padded with copies of its last example, cut from the
  answer), so `fn`'s compiled form is reused."""
  n = x.shape[0]
  if size is None or n <= size:
    return fn(x)
  parts = []
  for i in range(0, n, size):
    part = jnp.asarray(x[i:i + size])
    real = part.shape[0]
    if real < size:
      part = jnp.concatenate([part, jnp.repeat(part[-1:], size - real, 0)])
    parts.append(jax.tree.map(lambda a, r=real: np.asarray(a)[:r],
                              fn(part)))
  return jax.tree.map(lambda *a: np.concatenate(a), *parts)


def _leaves_of(result, group: str) -> tuple[str, ...]:
  return tuple(result.groups[group])


def summarize(result, sample_fn, key: Array, *, batch_size: int = 1024,
              n_batches: int = 4, always_on: float = ALWAYS_ON,
              totals: dict | None = None) -> Summary:
  """The `Summary` of `result` on `n_batches` batches from `sample_fn`;
  the totals are `totals`' numbers if given (a run's final metrics), else
  the method's evaluation on fresh batches."""
  counts, sums, n = {}, {}, 0
  for i in range(n_batches):
    x = sample_fn(jax.random.fold_in(key, i), batch_size)
    for g, (act, score) in activity(result, x).items():
      act = np.asarray(act, np.float64)
      counts[g] = counts.get(g, 0) + act.sum(axis=0)
      sums[g] = sums.get(g, 0) + (act * np.asarray(score)).sum(axis=0)
    n += act.shape[0]
  spectra = {n: np.asarray(factor_spectrum(result.components.U[n],
                                           result.components.V[n]))
             for n in result.components.U}
  ranks = {n: np.asarray(effective_rank(s)) for n, s in spectra.items()}
  rows = []
  for g in counts:
    leaves = _leaves_of(result, g)
    with np.errstate(invalid="ignore", divide="ignore"):
      mean = np.where(counts[g] > 0, sums[g] / counts[g], np.nan)
    for c in range(len(counts[g])):
      f = float(counts[g][c] / n)
      rows.append(Component(
          group=g, index=c, frequency=f, mean_score=float(mean[c]),
          norm={n: float(np.sqrt(np.sum(spectra[n][c] ** 2)))
                for n in leaves},
          effective_rank={n: float(ranks[n][c]) for n in leaves},
          status="dead" if f == 0 else "always on" if f >= always_on
          else ""))
  final = totals or result.method.evaluate(
      result, sample_fn, jax.random.fold_in(key, n_batches),
      batch_size=batch_size, n_batches=n_batches)
  # The counts of alive and dead components are this summary's own (its
  # header), not the evaluation's on other examples.
  totals = {k: float(v) for k, v in final.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("threshold", "topk_threshold", "steps",
                          "wall_seconds", "dead_components")
            and not k.startswith("alive")}
  m = result.method
  return Summary(method=type(m).__name__, score=m.SCORE, n_examples=n,
                 components=tuple(rows), totals=totals, active=m.ACTIVE)


@dataclasses.dataclass(frozen=True)
class TopInputs:
  """A component's highest-scoring examples and what switching it off
  costs on each."""
  group: str
  index: int
  frequency: float
  inputs: np.ndarray              # [k, ...] the examples
  scores: np.ndarray              # [k] the method's score, descending
  ablation: np.ndarray            # [k] recon loss with the component off
  positions: np.ndarray | None = None   # [k] the position in a sequence


def top_inputs(result, sample_fn, key: Array, *, k: int = 8,
               batch_size: int = 1024, n_batches: int = 4,
               include_dead: bool = False, max_ties: int = 64,
               max_bytes: int = MAX_BYTES) -> list[TopInputs]:
  """Per component, the `k` examples of `n_batches` fresh batches with the
  highest score (only examples where the score is positive; ties, e.g. at
  SPD's `G = 1`, broken by the larger ablation, among up to `max_ties`),
  and the reconstruction loss between the output with all components on
  and with this one off, on each (`ablation`).

  The scores and the ablations are computed a few examples at a time, as
  many as `examples_per_pass` fits in `max_bytes` (the outputs of a pass;
  default 256 MiB: 8 windows of 16 tokens of a 262,144-token vocabulary);
  the answer does not depend on it.
  """
  xs, acts, per_pass = [], {}, None
  for i in range(n_batches):
    x = sample_fn(jax.random.fold_in(key, i), batch_size)
    xs.append(np.asarray(x))
    if per_pass is None:
      per_pass = examples_per_pass(result, x, max_bytes)
    for g, (act, score) in activity(result, x, per_pass=per_pass).items():
      acts.setdefault(g, []).append((np.asarray(act), np.asarray(score)))
  x_all = np.concatenate(xs)
  out = []
  for g, parts in acts.items():
    active = np.concatenate([a for a, _ in parts])
    score = np.concatenate([s for _, s in parts])
    per = active.shape[0] // x_all.shape[0]     # positions per example
    freq = active.mean(axis=0)
    picks = []
    for c in range(score.shape[1]):
      if freq[c] == 0 and not include_dead:
        continue
      order = np.argsort(-score[:, c], kind="stable")
      kth = score[order[min(k, len(order)) - 1], c]
      order = order[(score[order, c] >= kth) & (score[order, c] > 0)]
      if order.size:
        picks.append((c, order[:max(k, max_ties)]))
    if not picks:
      continue
    ablation = _ablate(result, g, x_all, picks, score.shape[1], per,
                       per_pass)
    start = 0
    for c, cand in picks:
      abl = ablation[start:start + cand.size]
      start += cand.size
      order = np.lexsort((-abl, -score[cand, c]))[:k]
      best = cand[order]
      out.append(TopInputs(g, c, float(freq[c]), x_all[best // per],
                           score[best, c], abl[order],
                           best % per if per > 1 else None))
  return out


def _ablate(result, group, x_all, picks, n_components, per: int,
            size: int) -> np.ndarray:
  """The per-example recon loss of switching off each picked component on
  its own examples, `size` at a time (on sequences: off at every position,
  the loss at the picked one)."""
  rows = np.concatenate([o for _, o in picks])
  comp = np.concatenate([np.full(o.size, c) for c, o in picks])
  n = rows.size
  size = min(size, n)
  pad = -n % size                  # every pass one shape: one compile
  rows, comp = np.pad(rows, (0, pad), mode="edge"), np.pad(comp, (0, pad),
                                                           mode="edge")
  out = [_ablate_pass(result, group, x_all, rows[i:i + size],
                      comp[i:i + size], n_components, per)
         for i in range(0, rows.size, size)]
  return np.concatenate(out)[:n]


def _ablate_pass(result, group, x_all, rows, comp, n_components, per):
  x = jnp.asarray(x_all[rows // per])
  lead = () if per == 1 else (per,)
  off = np.ones((x.shape[0],) + lead + (n_components,), np.float32)
  off[np.arange(len(rows)), ..., comp] = 0.0
  on = jnp.ones_like(off)
  y_on = result.apply(x, {group: on})         # the other groups: as is
  y_off = result.apply(x, {group: jnp.asarray(off)})
  at = jnp.asarray(rows % per) if per > 1 else None
  return np.asarray(_ablation_loss(
      y_on, y_off, at, kl=getattr(result.method, "recon", "mse") == "kl"))


@functools.partial(jax.jit, static_argnames="kl")
def _ablation_loss(y_on: Array, y_off: Array, at: Array | None, *,
                   kl: bool) -> Array:
  """Per example `b`, the recon loss (KL or MSE) between `y_on[b]` and
  `y_off[b]`, at position `at[b]` where given, averaged over the rest."""
  if at is not None:             # the output at the picked position
    y_on = jnp.take_along_axis(y_on, at[:, None, None], axis=1)[:, 0]
    y_off = jnp.take_along_axis(y_off, at[:, None, None], axis=1)[:, 0]
  if kl:
    per_row = losses.kl_rows(y_on, y_off)
    return jnp.mean(per_row.reshape(y_on.shape[0], -1), axis=1)
  return jnp.mean((y_on - y_off) ** 2, axis=tuple(range(1, y_on.ndim)))


def describe_input(x: np.ndarray, n: int = 4) -> str:
  """A vector input as its `n` largest entries, e.g. `x3=0.82, x0=0.10`
  (all of them when zero elsewhere)."""
  x = np.asarray(x).reshape(-1)
  idx = np.argsort(-np.abs(x), kind="stable")[:n]
  idx = idx[x[idx] != 0]
  return ", ".join(f"x{i}={x[i]:.2f}" for i in idx) or "0"
