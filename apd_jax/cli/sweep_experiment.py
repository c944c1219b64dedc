"""`train_and_evaluate(config, workdir)` for a config whose `sweep` section
lists values: all combinations train in one program (`apd_jax.engine.sweep`).

Writes to `workdir`:

  config.json, target_params.msgpack   as a single run
  targets/seed_<s>/target_params.msgpack
                         with `sweep.target_per_seed`: the target trained
                         with seed s, which the runs of seed s decompose
  runs/run_<i>/          each run as a normal decomposition workdir (its own
                         metrics.jsonl, TensorBoard events, summary.json,
                         components.npz and figures)
  sweep.csv, sweep.md    every run's swept values and final metrics; with
                         seeds swept, sweep.md also pools each setting's seeds
  sweep_<name>.png       each metric against each swept value
  sweep.json             the pooled table, the best run, timings
  best/                  the best run (by `config.sweep.select`) as a normal
                         decomposition workdir, its config.json holding the
                         run's values

Point TensorBoard at `workdir/runs` to compare the runs' curves.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import ml_collections
from absl import logging

from apd_jax import targets
from apd_jax.cli import config as cli_config
from apd_jax.cli import experiment
from apd_jax.cli import runlog
from apd_jax.cli import sweep_report
from apd_jax.cli import workdir as workdirs
from apd_jax.engine import sweep
from apd_jax.training import sharding


def swept(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """The swept names and their values (those with any values)."""
  return {n: tuple(config.sweep[n]) for n in cli_config.swept_names(config)
          if len(config.sweep[n])}


def is_sweep(config: ml_collections.ConfigDict) -> bool:
  return bool(swept(config))


def run_config(config: ml_collections.ConfigDict,
               run: dict) -> ml_collections.ConfigDict:
  """`config` as a single run with `run`'s values (sweep section emptied)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    for k, v in run.items():
      cli_config.set_option(c, k, v)
    for n in cli_config.swept_names(config):
      c.sweep[n] = ()
  return c


def check_run(config: ml_collections.ConfigDict, workdir: str, *,
              fresh: bool = False) -> int | None:
  """Checks every option of the sweep `config`, every run's values (the
  method's `check_runs`) and, unless `fresh`, that a sweep saved in
  `workdir` has the same settings; reads only.

  Returns:
    The step of `workdir`'s latest checkpoint (None: none, or `fresh`).

  Raises:
    cli_config.ConfigError: naming what is refused.
  """
  with cli_config.user_errors():
    method, training = cli_config.method_and_training(config)
    values = swept(config)
    runs = sweep.grid(values, cli_config.swept_names(config))
    sweep.check_runs(method, training, runs,
                     sharding.make_mesh(**config.mesh))
    experiment.check_target(config, method.bound(runs), training)
    _check_settings(config, method, values)
    return workdirs.saved_step(config, workdir, fresh=fresh)


def _check_settings(config, method, values) -> None:
  """Raises `ValueError` for a sweep setting that the sweep would refuse
  only after training: the metric and mode that pick the best run, and a
  target per seed without seeds (or beside `target.path`)."""
  s = config.sweep
  metrics = (("loss",) + tuple(method.METRICS)
             + targets.get(config.target.name).METRICS)
  if s.select not in metrics:
    raise ValueError(f"sweep.select={s.select!r} is not a metric of the "
                     f"sweep; one of {list(metrics)}")
  if s.select_mode not in ("min", "max"):
    raise ValueError(f"sweep.select_mode must be 'min' or 'max', got "
                     f"{s.select_mode!r}")
  if s.target_per_seed and "seed" not in values:
    raise ValueError("sweep.target_per_seed needs seeds to sweep "
                     "(sweep.seed)")
  if s.target_per_seed and config.target.path:
    raise ValueError("sweep.target_per_seed trains a target per seed; it "
                     f"cannot also load target.path={config.target.path!r}")


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains every run of the sweep, writes the outputs; returns a summary.

  Every option is checked first (`check_run`: a `ConfigError`), before
  anything is trained or written. Checkpoints every run together in
  `workdir/checkpoints`; started again in the same workdir (with the same
  config) it resumes from the latest.
  """
  return run_checked(config, workdir, check_run(config, workdir))


def run_checked(config: ml_collections.ConfigDict, workdir: str,
                step: int | None) -> dict:
  """`train_and_evaluate` once `check_run` has passed and given `step`, the
  checkpoint to resume from (the command line checks before `--fresh`)."""
  os.makedirs(workdir, exist_ok=True)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  as_given = config
  config = workdirs.reload_saved_target(workdir, config, step)
  if runlog.is_writer():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(as_given.to_json_best_effort(indent=2))
  values = swept(config)
  own = _seed_targets(as_given, workdir, values, resumed=step is not None)
  t = config.target
  if own and not t.path:
    # Each run decomposes its seed's own target; the sweep's (a template
    # for the shapes, saved in the workdir) is one of them, read back
    # rather than trained again: `config.seed`'s where it is swept.
    t = t.copy_and_resolve_references()
    t.path = _target_file(workdir, config.seed if config.seed in own
                          else min(own))
  apply_fn, params, sample_fn, has_aux = experiment.make_target(
      t, config.seed, workdir)
  runs = sweep.grid(values, cli_config.swept_names(config))
  dirs = [os.path.join(workdir, "runs", f"run_{i:03d}")
          for i in range(len(runs))]
  for d in dirs:
    workdirs.cut_metrics_log(d, step)
  logs = [runlog.RunLog(d, append=step is not None, resumed_at=step,
                        events=workdirs.new_events(d, step, config.steps))
          for d in dirs]
  logging.info("sweep of %d runs over %s", len(runs), values)

  def write(step, records):
    for log, record in zip(logs, records, strict=True):
      log.write(step, record)

  method, training = cli_config.method_and_training(
      config, callback=write, mesh=sharding.make_mesh(**config.mesh),
      checkpoint_dir=ckpt_dir)
  t0 = time.perf_counter()
  result = sweep.decompose_sweep(
      apply_fn, params, sample_fn, include=config.include, sweep=values,
      method=method, training=training, has_aux=has_aux,
      params_for_run=(lambda run: own[run["seed"]]) if own else None)
  total = time.perf_counter() - t0
  module = targets.get(config.target.name)
  metrics = ("loss",) + tuple(method.METRICS) + module.METRICS
  rows = []
  for i, (run, d) in enumerate(zip(runs, result.decompositions,
                                   strict=True)):
    rc = run_config(config, run)
    finite = d.metrics["finite"]
    summary = experiment.summarize(d, resumed_at=step, total_seconds=total)
    summary["loss"] = d.history[-1]["loss"] if d.history else float("nan")
    if finite:
      summary = experiment.write_outputs(rc, dirs[i], d, sample_fn, summary,
                                         logs[i])
    logs[i].close()
    rows.append(dict(run=i, **run, **{m: summary.get(m, float("nan"))
                                      for m in metrics}))
  names = list(values)
  pooled = []
  if "seed" in values:
    pooled = sweep_report.by_setting(
        rows, names, metrics, success=module.SUCCESS,
        threshold=config.sweep.mmcs_threshold)
  best = sweep.best_index([r[config.sweep.select] for r in rows],
                          config.sweep.select_mode)
  if runlog.is_writer():
    _write_reports(workdir, config, rows, names, metrics, pooled,
                   module.SUCCESS)
    _export_best(workdir, dirs[best], run_config(config, runs[best]),
                 _target_file(workdir, runs[best]["seed"]) if own
                 else os.path.join(workdir, "target_params.msgpack"))
  # Every run logs the same times; over all sessions, as a single run's.
  history = result.decompositions[0].history
  seconds = workdirs.timings(history)[0]
  summary = dict(
      n_runs=len(runs), swept=values, train_seconds=seconds,
      total_seconds=total + workdirs.timings(history, step or 0)[0],
      run_steps_per_s=len(runs) * config.steps / seconds,
      best_run=best, best_values=runs[best], best_metrics=rows[best],
      by_setting=pooled)
  if runlog.is_writer():
    with open(os.path.join(workdir, "sweep.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


def _write_reports(workdir, config, rows, names, metrics, pooled, success):
  extra = ""
  if pooled:
    cols = [n for n in names if n != "seed"] + ["seeds"] + list(metrics)
    shown = [{**p, **{m: f"{sweep_report.fmt(p[m])} ± "
                         f"{sweep_report.fmt(p[m + '_sd'])}"
                      for m in metrics}} for p in pooled]
    if success:
      cols.append("success_frac")
    extra = ("Seeds pooled per setting (mean ± population sd"
             + (f"; success_frac: fraction of seeds with {success} >= "
                f"{config.sweep.mmcs_threshold}" if success else "")
             + "):\n\n"
             + sweep_report.markdown(shown, cols))
  sweep_report.write_table(
      rows, ["run"] + names + list(metrics),
      os.path.join(workdir, "sweep.csv"), os.path.join(workdir, "sweep.md"),
      heading=f"Sweep of {len(rows)} runs, {config.steps} steps each "
              f"(best by {config.sweep.select_mode} "
              f"{config.sweep.select}).", extra_md=extra)
  if not config.figures:
    return
  plotted = [n for n in names if n != "seed"] or names
  for name in plotted:
    others = [n for n in plotted if n != name]
    sweep_report.plot_sweep(rows, name, metrics,
                            os.path.join(workdir, f"sweep_{name}.png"),
                            hue=others[0] if others else None)


def _target_file(workdir: str, seed: int) -> str:
  return os.path.join(workdir, "targets", f"seed_{seed}",
                      "target_params.msgpack")


def _seed_targets(config, workdir, values, resumed: bool) -> dict:
  """With `sweep.target_per_seed`: `{seed: params}`, the target trained
  with each swept seed (as a single run with that seed trains it), saved
  under `workdir/targets/` and read back from there on a restart."""
  if not config.sweep.target_per_seed:
    return {}
  if "seed" not in values:
    raise ValueError("sweep.target_per_seed needs seeds to sweep "
                     "(sweep.seed)")
  if config.target.path:
    raise ValueError("sweep.target_per_seed trains a target per seed; it "
                     f"cannot also load target.path={config.target.path!r}")
  out = {}
  for seed in values["seed"]:
    path = _target_file(workdir, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = config.target.copy_and_resolve_references()
    if resumed and os.path.exists(path):
      t.path = path
    out[seed] = experiment.make_target(t, seed, os.path.dirname(path))[1]
  return out


def _export_best(workdir, run_dir, config, target_file):
  best = os.path.join(workdir, "best")
  if os.path.exists(best):
    shutil.rmtree(best)
  shutil.copytree(run_dir, best)
  shutil.copy(target_file, os.path.join(best, "target_params.msgpack"))
  with open(os.path.join(best, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
