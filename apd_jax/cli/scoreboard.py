"""The reproduction scoreboard: each toy config of both methods over seeds.

`run(workdir, configs, names, seeds, quick)` trains every listed entry
(a config file in `configs`) as one sweep over seeds
(`sweep.target_per_seed`: seed n trains the target and the decomposition
with seed n, as `--config.seed=n` would), each in `workdir/<entry>`
(resumable; a finished entry is read back), and writes

  scoreboard.md / .csv / .json   per entry: the fraction of seeds that
                                 succeed by the entry's criterion, its
                                 metrics' mean ± sd, wall time, steps/s,
                                 and the failure signs of
                                 `analysis.diagnostics` on failed and on
                                 successful seeds, with how well each sign
                                 separates the two (AUC).

The criteria are those of each method's paper: TMS with SPD, every feature
with its own component of the right norm (MMCS ≥ 0.999 and 0.98 ≤ ML2R ≤
1.04, the SPD paper's 1.000 / 0.99-1.03); TMS with APD, every feature with
its own component, shrunk by at most a fifth (MMCS ≥ 0.99 and ML2R ≥ 0.8;
the APD paper's 0.998 / 0.893: APD shrinks by design; runs with a merged
or split feature had ML2R 0.04-0.71), and `strict` counts the SPD rule
for both methods; residual MLPs, features recovered at
cosine ≥ 0.9 (APD: by the feature's best component; SPD: by its own `W_in`
subcomponent, shared with no other feature); gated functions, every
function recovered at cosine ≥ 0.9.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import math
import os
import statistics
from typing import Callable

import jax
import ml_collections
from absl import logging

from apd_jax.analysis import diagnostics
from apd_jax.cli import pieces
from apd_jax.cli import results
from apd_jax.cli import sweep_experiment
from apd_jax.cli import sweep_report
from apd_jax.cli import workdir as workdir_lib
from apd_jax.training import checkpoint


@dataclasses.dataclass(frozen=True)
class Entry:
  """One row: a config (module of `configs/` and its argument)."""
  name: str
  method: str                               # its config's method.name
  module: str
  arg: str | None
  criterion: str                            # the success rule, in words
  success: Callable[[dict], bool]           # of a run's summary.json
  shown: tuple[str, ...]                    # metrics tabulated
  # Config values set after loading (dotted keys), e.g. another size.
  overrides: tuple[tuple[str, object], ...] = ()


def _tms(s):
  return s["mmcs"] >= 0.999 and 0.98 <= s["ml2r"] <= 1.04


def _tms_apd(s):
  return s["mmcs"] >= 0.99 and s["ml2r"] >= 0.8


def _features(key, n):
  return lambda s: s[key] >= n


def _functions(s):
  return min(s["function_recovery"]) >= 0.9


TMS_RULE = "MMCS ≥ 0.999 and 0.98 ≤ ML2R ≤ 1.04"
TMS_APD_RULE = "MMCS ≥ 0.99 and ML2R ≥ 0.8"


# Each family of configs (by its files' prefix): its method (the configs'
# `method.name`), its paper's TMS rule and its residual-MLP measure.
FAMILIES = (
    ("", "apd", (TMS_APD_RULE, _tms_apd), "features_recovered"),
    ("spd_", "spd", (TMS_RULE, _tms), "features_with_own_subcomponent"),
    ("vpd_", "vpd", (TMS_RULE, _tms), "features_with_own_subcomponent"),
)
# The configs a family has where it lacks some (VPD: the toys its authors
# ran it on).
ONLY = {"vpd": ("tms_5_2", "tms_40_10", "resid_mlp_1")}


def _entries() -> tuple[Entry, ...]:
  out = []
  for prefix, method, tms_rule, own in FAMILIES:
    mine = []
    for m in ("tms_5_2", "tms_40_10"):
      for arg in (None, "identity"):
        mine.append(Entry(prefix + m + (":" + arg if arg else ""), method,
                          prefix + m, arg, *tms_rule, ("mmcs", "ml2r")))
    for layers, n in ((1, 100), (2, 95), (3, 95)):
      mine.append(Entry(f"{prefix}resid_mlp_{layers}", method,
                        f"{prefix}resid_mlp_{layers}", None,
                        f"{own} ≥ {n} of 100", _features(own, n), (own,)))
    mine.append(Entry(f"{prefix}gated_functions", method,
                      f"{prefix}gated_functions", None,
                      "every function's recovery ≥ 0.9", _functions,
                      ("min_function_recovery",)))
    has = ONLY.get(method)
    out += [e for e in mine
            if has is None or e.module.removeprefix(prefix) in has]
  return tuple(out)


ENTRIES = _entries()
BY_NAME = {e.name: e for e in ENTRIES}


def with_settings(entries: tuple[Entry, ...], tag: str,
                  sets: dict[str, object]) -> tuple[Entry, ...]:
  """`entries` with the config values `sets` (dotted keys) on top, each
  named `<name>@<tag>` (so its workdir and results file are its own)."""
  if not tag or any(ch in tag for ch in "@:/ ,"):
    raise ValueError(f"a settings tag names the variant in file names: "
                     f"{tag!r} must be non-empty, without '@:/ ,'")
  extra = tuple(sorted(sets.items()))
  return tuple(dataclasses.replace(e, name=f"{e.name}@{tag}",
                                   overrides=e.overrides + extra)
               for e in entries)


def load_config(configs: str, module: str, arg: str | None
                ) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the file `configs/<module>.py`."""
  path = os.path.join(configs, module + ".py")
  spec = importlib.util.spec_from_file_location(f"_config_{module}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def entry_config(entry: Entry, configs: str, seeds: int | tuple[int, ...],
                 quick: bool) -> ml_collections.ConfigDict:
  """The entry's config as a sweep over `seeds` (a number n: 0..n-1), one
  target per seed; `quick`: a few steps of everything (a smoke run, not a
  result)."""
  c = load_config(configs, entry.module, entry.arg)
  for key, value in entry.overrides:
    *path, last = key.split(".")
    node = c
    for part in path:
      node = node[part]
    node[last] = value
  c.sweep.seed = tuple(range(seeds)) if isinstance(seeds, int) else seeds
  c.sweep.target_per_seed = True
  c.sweep.select = "faithfulness"
  if quick:
    c.update(steps=20, log_every=10, print_every=10, eval_batches=1,
             batch_size=min(c.batch_size, 128), checkpoint_every=0)
    if "steps" in c.target:
      c.target.steps = min(c.target.steps, 200)
  return c


def auc(failed: list[float], succeeded: list[float]) -> float | None:
  """P(a failed run's value > a successful run's), ties counted half;
  None unless both kinds of run exist."""
  if not failed or not succeeded:
    return None
  wins = sum((f > s) + 0.5 * (f == s) for f in failed for s in succeeded)
  return wins / (len(failed) * len(succeeded))


def _mean_sd(values):
  values = [float(v) for v in values]
  if not values or not all(map(math.isfinite, values)):
    return (statistics.fmean(values) if values else math.nan, math.nan)
  return statistics.fmean(values), statistics.pstdev(values)


def read_runs(workdir: str, sweep: dict) -> list[dict | None]:
  """Each run's summary.json in the sweep's `workdir` (None where a run's
  loss became non-finite: it wrote none)."""
  out = []
  for i in range(sweep["n_runs"]):
    path = os.path.join(workdir, "runs", f"run_{i:03d}", "summary.json")
    if os.path.exists(path):
      with open(path) as f:
        out.append(json.load(f))
    else:
      out.append(None)
  return out


def score_entry(entry: Entry, parts: list[tuple[dict, list]]) -> dict:
  """The entry's row from its sweeps `parts`, in seed order: each its
  `sweep.json` and its runs' summaries (`read_runs`); a run whose loss
  became non-finite (no summary) counts as failed."""
  runs = []
  for _, summaries in parts:
    for s in summaries:
      if s is None:
        runs.append(dict(success=False, finite=False, diagnostics={}))
        continue
      s = dict(s)
      if "function_recovery" in s:
        s["min_function_recovery"] = min(s["function_recovery"])
      s["success"] = bool(entry.success(s))
      runs.append(s)
  seconds = sum(sweep["train_seconds"] for sweep, _ in parts)
  run_steps = sum(sweep["run_steps_per_s"] * sweep["train_seconds"]
                  for sweep, _ in parts)
  good = [r for r in runs if r.get("finite", True)]
  ok = [r for r in runs if r["success"]]
  bad = [r for r in runs if not r["success"]]
  row = dict(entry=entry.name, method=entry.method,
             criterion=entry.criterion, seeds=len(runs),
             succeeded=len(ok), success_frac=len(ok) / len(runs),
             steps=good[0]["steps"] if good else None,
             train_seconds=seconds,
             run_steps_per_s=run_steps / seconds if seconds else math.nan,
             non_finite=len(runs) - len(good))
  if good and "mmcs" in good[0]:
    row["strict"] = sum(_tms(r) for r in good)
  if good and "identity_ci_errors" in good[0]:
    # The VPD authors' check: no error in the importances on one-hot probes.
    row["ci_check"] = sum(r["identity_ci_errors"] == 0 for r in good)
  for key in entry.shown + ("faithfulness", "l0"):
    row[key], row[key + "_sd"] = _mean_sd([r.get(key, math.nan)
                                           for r in runs])
  row["per_seed"] = [{k: r.get(k) for k in ("success",) + entry.shown}
                     for r in runs]
  for seed, r in zip(row["per_seed"], runs, strict=True):
    if "identity_ci_errors" in r:
      seed["identity_ci_errors"] = r["identity_ci_errors"]
  for key in diagnostics.KEYS:
    failed = [r["diagnostics"][key] for r in bad if key in r["diagnostics"]]
    fine = [r["diagnostics"][key] for r in ok if key in r["diagnostics"]]
    if not failed and not fine:
      continue
    row[f"{key}_failed"] = _mean_sd(failed)[0]
    row[f"{key}_succeeded"] = _mean_sd(fine)[0]
    row[f"{key}_auc"] = auc(failed, fine)
  row["diagnostics"] = [r["diagnostics"] for r in runs]
  return row


def seed_groups(seeds: int, per_sweep: int | None = None
                ) -> list[tuple[int, ...]]:
  """Seeds 0..seeds-1 in consecutive sweeps of at most `per_sweep` runs
  (None: one sweep)."""
  size = seeds if per_sweep is None else per_sweep
  if size < 1:
    raise ValueError(f"seeds per sweep must be positive, got {size}")
  return [tuple(range(a, min(a + size, seeds)))
          for a in range(0, seeds, size)]


def group_dir(workdir: str, group: tuple[int, ...], whole: bool) -> str:
  """Where a sweep of the entry's seeds `group` trains: the entry's own
  workdir when it is all of them in one sweep, else `seeds_<a>-<b>`."""
  if whole:
    return workdir
  return os.path.join(workdir, f"seeds_{group[0]}-{group[-1]}")


def _sweeps(entry, workdir, configs, seeds, quick, checkpoint_every,
            figures, per_sweep):
  """`(seeds, config, workdir)` of each of the entry's sweeps."""
  groups = seed_groups(seeds, per_sweep)
  for group in groups:
    config = entry_config(entry, configs, group, quick)
    config.figures = config.figures and figures
    if checkpoint_every is not None and not quick:
      config.checkpoint_every = checkpoint_every
    yield group, config, group_dir(workdir, group, len(groups) == 1)


def _finished(where: str, config: ml_collections.ConfigDict) -> bool:
  """Whether the sweep in `where` finished with `config`'s settings."""
  return (os.path.exists(os.path.join(where, "sweep.json"))
          and workdir_lib.same_settings(where, config))


def progress(workdir: str, configs: str, names: list[str], seeds: int, *,
             per_sweep: int | None = None, results_dir: str | None = None,
             entries: tuple[Entry, ...] = ENTRIES) -> list[dict]:
  """Where a campaign stands, training nothing: for each sweep of each
  entry `run` would train, `finished`, `finished (record)` (its workdir is
  gone, its record in `results_dir/pieces` is read back), `step N of M`
  (its newest checkpoint) or `not started`."""
  rows = []
  for e in select(names, entries):
    folder = os.path.join(workdir, e.name.replace(":", "_"))
    for group, config, where in _sweeps(e, folder, configs, seeds, False,
                                        None, True, per_sweep):
      if _finished(where, config):
        state = "finished"
      elif results_dir and pieces.find(os.path.join(results_dir, "pieces"),
                                       e.name, group, config):
        state = "finished (record)"
      else:
        try:
          step = checkpoint.latest_step(os.path.join(where, "checkpoints"))
          state = ("not started" if step is None
                   else f"step {step} of {config.steps}")
        except ValueError:
          state = "no readable checkpoint"
      rows.append(dict(entry=e.name, seeds=f"{group[0]}-{group[-1]}",
                       state=state))
  return rows


def run_entry(entry: Entry, workdir: str, configs: str, seeds: int,
              quick: bool, checkpoint_every: int | None = None,
              figures: bool = True, per_sweep: int | None = None,
              pieces_dir: str | None = None, command: str = "") -> dict:
  """Trains (or reads back) one entry's sweeps, `per_sweep` seeds at a
  time (`seed_groups`; None: all in one); returns its row.

  Each sweep finishes (and is read back) on its own, so smaller sweeps are
  pieces of a campaign short enough to end between two interruptions;
  the row pools them (its time is their sum). With `pieces_dir`, each
  finished sweep leaves its record there (`pieces`), and a sweep whose
  workdir is gone is read back from its record."""
  parts = []
  for group, config, where in _sweeps(entry, workdir, configs, seeds, quick,
                                      checkpoint_every, figures, per_sweep):
    saved = pieces_dir and pieces.find(pieces_dir, entry.name, group, config)
    if _finished(where, config):
      with open(os.path.join(where, "sweep.json")) as f:
        sweep = json.load(f)
      part = (sweep, read_runs(where, sweep))
    elif saved:
      logging.info("%s, seeds %s: read back from its record in %s",
                   entry.name, group, pieces_dir)
      part = saved
    else:
      sweep = sweep_experiment.train_and_evaluate(config, where)
      part = (sweep, read_runs(where, sweep))
    if pieces_dir and not saved:
      pieces.record(pieces_dir, entry.name, group, config, *part,
                    _meta(quick), command)
    parts.append(part)
  return score_entry(entry, parts)


def pooled_separation(rows: list[dict]
                      ) -> dict[str, dict[str, float | None]]:
  """`{method: {sign: AUC}}` over every run of the method on the board
  (failed vs succeeded). Pooled per method: what a sign reads on a good run
  differs between them (SPD's subcomponents of an identity layer or an
  output product each serve many inputs; its spare ones are dead)."""
  out = {}
  for method in dict.fromkeys(r["method"] for r in rows):
    out[method] = {}
    for key in diagnostics.KEYS:
      bad, ok = [], []
      for row in rows:
        if row["method"] != method:
          continue
        for d, s in zip(row["diagnostics"], row["per_seed"], strict=True):
          if key in d:
            (ok if s["success"] else bad).append(d[key])
      out[method][key] = auc(bad, ok)
  return out


def write(workdir: str, rows: list[dict], meta: dict,
          entries: tuple[Entry, ...] = ENTRIES) -> None:
  """scoreboard.json (everything), .csv (one line per entry), .md."""
  by_name = {e.name: e for e in entries}
  pooled = pooled_separation(rows)
  with open(os.path.join(workdir, "scoreboard.json"), "w") as f:
    json.dump(dict(meta, entries=rows, separation=pooled), f, indent=2)
  flat = [{k: v for k, v in r.items() if not isinstance(v, list)}
          for r in rows]
  cols = list(dict.fromkeys(k for r in flat for k in r))
  shown = []
  fmt = sweep_report.fmt
  for r in rows:
    metrics = [f"{k} {fmt(r[k])} ± {fmt(r[k + '_sd'])}"
               for k in by_name[r["entry"]].shown]
    shown.append(dict(
        entry=f"`{r['entry']}`", method=r["method"].upper(),
        success=f"{r['succeeded']} of {r['seeds']}",
        criterion=r["criterion"],
        strict=(f"{r['strict']} of {r['seeds']}" if "strict" in r else ""),
        ci_check=(f"{r['ci_check']} of {r['seeds']}" if "ci_check" in r
                  else ""),
        metrics="; ".join(metrics),
        faithfulness=r["faithfulness"], l0=r["l0"], steps=r["steps"],
        wall=f"{r['train_seconds']:.0f} s",
        rate=f"{r['run_steps_per_s']:.4g}"))

  def pair(r, k):
    return (f"{fmt(r.get(k + '_failed', math.nan))} / "
            f"{fmt(r.get(k + '_succeeded', math.nan))}")

  aucs = [f"auc_{m}" for m in pooled]
  signs = [dict(sign=k, **{r["entry"]: pair(r, k) for r in rows},
                **{f"auc_{m}": "" if v[k] is None else v[k]
                   for m, v in pooled.items()}) for k in diagnostics.KEYS]
  extra = ("Failure signs (`apd_jax.analysis.diagnostics`), mean over the "
           "failed / the successful seeds of each entry, and per method the "
           "AUC over all its runs on the board (the chance that a failed "
           "run's value exceeds a successful run's; 0.5 is no separation; "
           "empty where the method has only one kind of run):\n\n"
           + sweep_report.markdown(signs, ["sign"] + [r["entry"] for r in rows]
                                   + aucs))
  sweep_report.write_table(
      flat, cols, os.path.join(workdir, "scoreboard.csv"), os.devnull)
  with open(os.path.join(workdir, "scoreboard.md"), "w") as f:
    quick = " — quick smoke run, not a result" if meta["quick"] else ""
    f.write(f"Scoreboard measured {meta['date']} on {meta['devices']} "
            f"(jax {meta['jax']}){quick}. `strict`: seeds that meet "
            f"{TMS_RULE}; `ci_check`: seeds whose causal importances on "
            f"the probes 0.75 e_i pass the VPD authors' check (no error: "
            f"each feature one subcomponent of its own in each use of W, "
            f"above 0.9, every other importance at most 0.1)."
            " Seed n trains the target and the decomposition with seed n; "
            "wall is the sweep's training time for all seeds together, rate "
            "the steps per second summed over its runs.\n\n")
    f.write(sweep_report.markdown(shown, [
        "entry", "method", "success", "criterion", "strict", "ci_check",
        "metrics",
        "faithfulness", "l0", "steps", "wall", "rate"]))
    f.write("\n" + extra)


def select(names: list[str], entries: tuple[Entry, ...] = ENTRIES
           ) -> tuple[Entry, ...]:
  """The entries named in `names` (all if empty), in board order."""
  known = [e.name for e in entries]
  unknown = sorted(set(names) - set(known))
  if unknown:
    raise ValueError(f"unknown scoreboard entries {unknown}; known: "
                     f"{sorted(known)}")
  return tuple(e for e in entries if not names or e.name in names)


def run(workdir: str, configs: str, names: list[str], seeds: int,
        quick: bool, *, checkpoint_every: int | None = None,
        results_dir: str | None = None, command: str = "",
        entries: tuple[Entry, ...] = ENTRIES, figures: bool = True,
        per_sweep: int | None = None) -> list:
  """Every entry of `names` (all of `entries` if empty) from the config
  files in `configs`, then the tables.

  `checkpoint_every` overrides the configs' (long runs that may be stopped
  at any time: a campaign); with `results_dir`, each entry that finishes
  leaves its row there (`results.export`, with `command`), and each of its
  finished sweeps its record in `results_dir/pieces` (`run_entry`);
  `figures=False` draws no run's figures (the tables are the same);
  `per_sweep` trains an entry's seeds that many at a time (`run_entry`)."""
  chosen = select(names, entries)
  os.makedirs(workdir, exist_ok=True)
  rows = []
  for e in chosen:
    rows.append(run_entry(
        e, os.path.join(workdir, e.name.replace(":", "_")), configs, seeds,
        quick, checkpoint_every, figures, per_sweep,
        pieces_dir=(os.path.join(results_dir, "pieces")
                    if results_dir and not quick else None),
        command=command))
    meta = _meta(quick)
    write(workdir, rows, meta, entries)   # after each entry: nothing lost
    if results_dir and not quick:
      results.export(rows[-1], meta, results_dir, command)
  return rows


def _meta(quick: bool) -> dict:
  return dict(date=datetime.date.today().isoformat(), jax=jax.__version__,
              devices=f"{len(jax.devices())} × {jax.devices()[0].device_kind}",
              quick=quick)
