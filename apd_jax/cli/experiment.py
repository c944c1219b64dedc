"""`train_and_evaluate(config, workdir)`: the command line's whole job.

With `train_lm.py`, the only code that reads a `ConfigDict`. It trains (or
loads) the target, decomposes it through the public `decompose` API on the
configured device mesh, and writes to `workdir` (files from process 0
only):

  config.json            the config as run
  target_params.msgpack  the target's params (flax serialization)
  metrics.jsonl          one line per log: step, losses, L0, steps/s
  events.out.tfevents.*  TensorBoard: the logged scalars, the figures, and
                         histograms of the scores (APD: attributions,
                         SPD: causal importances) and of activity
  components.npz         the factors U, V of every decomposed leaf
  summary.json           final metrics (faithfulness, L0, dead components;
                         MMCS/ML2R for TMS; feature recovery and
                         scrubbing losses for residual MLPs), under
                         `components` every component's statistics, under
                         `diagnostics` the signs of a failed run
                         (`analysis.diagnostics`)
  summary.md             the same as tables: per component its firing
                         frequency, mean attribution (SPD: G) when active,
                         norm and effective rank, dead/always on; and its
                         top inputs with the cost of switching it off
  summary.png            every component's firing frequency
  top_inputs.png         each component's top inputs (vector inputs)
  top_contexts.txt/.html language model: each component's top contexts
  components.png         TMS: target weights beside each component;
                         gated functions: each component's neurons,
                         coloured by the function they serve
  contributions.png      residual MLP: neuron contributions per feature,
                         target vs best component
  scrubbing.png          residual MLP: scrubbed / anti-scrubbed losses
  analysis.npz           residual MLP: the analysis arrays
  losses.png             the loss terms over training
  checkpoints/           orbax checkpoints of the training state (every
                         process); a run started again in the same workdir
                         resumes from the latest
  decomposition/         the finished decomposition (`export.load` it)

Only process 0 writes files. A config whose `sweep` section lists values is
run by `sweep_experiment.train_and_evaluate` instead.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import flax.serialization
import jax
import ml_collections
import numpy as np
from absl import logging

from apd_jax import targets
from apd_jax.analysis import component_figures
from apd_jax.analysis import diagnostics
from apd_jax.analysis import plotting
from apd_jax.analysis import summary as summary_lib
from apd_jax.cli import config as cli_config
from apd_jax.cli import runlog
from apd_jax.engine import api
from apd_jax.engine import export
from apd_jax.training import checkpoint
from apd_jax.training import distributed
from apd_jax.training import sharding


def make_target(t: ml_collections.ConfigDict, seed: int, workdir: str):
  """`(apply_fn, params, sample_fn, has_aux)` of the configured target
  (`targets.get(t.name)`); trains (or builds) and saves it unless `t.path`
  names saved params."""
  module = targets.get(t.name)
  if t.path:
    with open(t.path, "rb") as f:
      params = flax.serialization.from_bytes(targets.template(module, t),
                                             f.read())
    logging.info("loaded target params from %s", t.path)
  else:
    t0 = time.perf_counter()
    params, losses = targets.build(module, t, seed)
    if losses is not None:
      logging.info("trained target: loss %.4g -> %.4g in %.1fs",
                   float(losses[0]), float(losses[-1]),
                   time.perf_counter() - t0)
  _save_params(workdir, params)
  return (targets.apply_fn(module), params, targets.sample_fn(module, t),
          module.HAS_AUX)


# Fields that may change when a run is resumed: where and how often it
# saves, and on which devices it runs.
RESUMABLE_CHANGES = ("mesh", "checkpoint_every", "keep_checkpoints")


def check_resume(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises `ValueError` naming the fields in which `config` differs from
  the one saved in `workdir/config.json` (a restart must not mix runs)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = _flatten(json.load(f))
  new = _flatten(json.loads(config.to_json_best_effort()))
  differ = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k)
                  and k.split(".")[0] not in RESUMABLE_CHANGES)
  if differ:
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                      for k in differ)
    raise ValueError(
        f"{workdir} holds a run with other settings ({shown}); resume it "
        f"with its own settings, use another --workdir, or pass --fresh to "
        f"delete its checkpoints and start again")


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def start_afresh(workdir: str) -> None:
  """Deletes a previous run's checkpoints, logs and config in `workdir`."""
  if not runlog.is_writer():
    return
  shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
  for name in ("config.json", "metrics.jsonl"):
    if os.path.exists(os.path.join(workdir, name)):
      os.remove(os.path.join(workdir, name))


def reload_saved_target(workdir: str, config: ml_collections.ConfigDict,
                        step: int | None) -> ml_collections.ConfigDict:
  """On a restart (a checkpoint at `step`): the config that reloads the
  target saved in `workdir` instead of training it again."""
  if step is None:
    return config
  logging.info("workdir %s has a checkpoint at step %d: resuming", workdir,
               step)
  saved = os.path.join(workdir, "target_params.msgpack")
  if not config.target.path and os.path.exists(saved):
    config = ml_collections.ConfigDict(config.to_dict())
    config.target.path = saved
  return config


def cut_metrics_log(run_dir: str, step: int | None) -> None:
  """`run_dir/metrics.jsonl` cut back to the lines up to `step` (emptied
  when there is no checkpoint: a new run)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not distributed.is_main():
    return
  if step is None:
    os.makedirs(run_dir, exist_ok=True)
    open(path, "w").close()
  elif os.path.exists(path):
    with open(path) as f:
      kept = [line for line in f if json.loads(line)["step"] <= step]
    with open(path, "w") as f:
      f.writelines(kept)


def _save_params(workdir, params):
  if runlog.is_writer():
    with open(os.path.join(workdir, "target_params.msgpack"), "wb") as f:
      f.write(flax.serialization.to_bytes(params))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains the target, decomposes it, writes the outputs; returns summary.

  Resumes from the latest checkpoint in `workdir/checkpoints` if there is
  one (and the saved config agrees), so a run started again after an
  interruption ends where an uninterrupted one would.
  """
  os.makedirs(workdir, exist_ok=True)
  run_config = config
  step = checkpoint.latest_step(os.path.join(workdir, "checkpoints"))
  if step is not None:
    check_resume(workdir, config)
  config = reload_saved_target(workdir, config, step)
  cut_metrics_log(workdir, step)
  if runlog.is_writer():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(run_config.to_json_best_effort(indent=2))
  apply_fn, params, sample_fn, has_aux = make_target(
      config.target, config.seed, workdir)
  with runlog.RunLog(workdir, append=True) as log:
    method, training = cli_config.method_and_training(
        config, callback=log.write, mesh=sharding.make_mesh(**config.mesh),
        checkpoint_dir=os.path.join(workdir, "checkpoints"))
    t0 = time.perf_counter()
    result = api.decompose(apply_fn, params, sample_fn,
                           include=config.include, method=method,
                           training=training, has_aux=has_aux)
    summary = summarize(result, total_seconds=time.perf_counter() - t0)
    export.save(result, os.path.join(workdir, "decomposition"),
                config=json.loads(run_config.to_json_best_effort()))
    return write_outputs(config, workdir, result, sample_fn, summary, log)


def summarize(result: api.Decomposition, **extra) -> dict:
  """The final metrics, `extra`, and the median training rate."""
  rates = [r["steps_per_s"] for r in result.history[1:]]  # first compiles
  steps = result.metrics["steps"]
  return dict(result.metrics, **extra,
              steps_per_s=float(np.median(rates)) if rates
              else steps / result.metrics["wall_seconds"])


def describe_components(config: ml_collections.ConfigDict,
                        result: api.Decomposition, sample_fn,
                        workdir: str) -> dict:
  """Writes `summary.md` (every component and, for vector inputs, its top
  inputs), `summary.png` and `top_inputs.png`, logs the table; returns the
  summary as a dict."""
  opts = dict(batch_size=min(config.batch_size, 1024),
              n_batches=min(4, config.eval_batches))
  s = result.summary(key=jax.random.PRNGKey(config.seed + 3),
                     **opts)
  tops = None
  x = jax.eval_shape(lambda k: sample_fn(k, 1), jax.random.PRNGKey(0))
  if jax.numpy.issubdtype(x.dtype, jax.numpy.floating):  # not tokens
    tops = result.top_inputs(sample_fn,
                             key=jax.random.PRNGKey(config.seed + 4), **opts)
    component_figures.plot_top_inputs(
        tops, os.path.join(workdir, "top_inputs.png"),
        what=result.method.SCORE_NAME)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(s.markdown(tops))
  component_figures.plot_summary(s, os.path.join(workdir, "summary.png"))
  logging.info("components:\n%s", s.table())
  return s.to_dict()


def write_outputs(config: ml_collections.ConfigDict, workdir: str,
                  result: api.Decomposition, sample_fn, summary: dict,
                  log: runlog.RunLog) -> dict:
  """Writes the factors, the target's analyses and figures (also to `log`'s
  TensorBoard file), `summary.json` and the loss curves.

  Returns `summary` with the analyses' metrics (on process 0; elsewhere
  nothing is written and `summary` comes back as it is).
  """
  if not runlog.is_writer():
    return summary
  summary = dict(summary)
  np.savez(os.path.join(workdir, "components.npz"),
           **{f"U{n}": np.asarray(u) for n, u in result.components.U.items()},
           **{f"V{n}": np.asarray(v) for n, v in result.components.V.items()})
  summary.update(targets.get(config.target.name).report(
      result, sample_fn, workdir, t=config.target.to_dict(),
      seed=config.seed, batch_size=config.batch_size,
      eval_batches=config.eval_batches))
  summary["components"] = describe_components(config, result, sample_fn,
                                               workdir)
  summary["diagnostics"] = diagnostics.diagnose(
      result, sample_fn, jax.random.PRNGKey(config.seed + 5),
      batch_size=min(config.batch_size, 1024),
      n_batches=min(4, config.eval_batches))
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  plotting.plot_history(result.history, os.path.join(workdir, "losses.png"))
  step = result.metrics["steps"]
  log.figures(step, workdir)
  x = sample_fn(jax.random.PRNGKey(config.seed + 2), config.batch_size)
  # Every group's scores side by side, each position of a sequence a row.
  groups = summary_lib.activity(result, x).values()
  log.histograms(step, np.concatenate([s for _, s in groups], axis=1),
                 np.concatenate([a for a, _ in groups], axis=1),
                 name=result.method.SCORE_NAME.replace(" ", "_") + "s")
  return summary
