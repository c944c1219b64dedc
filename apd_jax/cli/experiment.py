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
  decomposition/         the finished decomposition (`export.load` it),
                         saved before the reports, so an error there
                         loses nothing trained (one in the final
                         evaluation is in its metrics; the run stops)

Only process 0 writes files. A config whose `sweep` section lists values is
run by `sweep_experiment.train_and_evaluate` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from apd_jax.cli import workdir as workdirs
from apd_jax.engine import api
from apd_jax.engine import export
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


def _save_params(workdir, params):
  if runlog.is_writer():
    with open(os.path.join(workdir, "target_params.msgpack"), "wb") as f:
      f.write(flax.serialization.to_bytes(params))


def check_run(config: ml_collections.ConfigDict, workdir: str, *,
              fresh: bool = False) -> int | None:
  """Checks every option of `config` and, unless `fresh`, that a run saved
  in `workdir` has the same settings (`check_resume`); reads only.

  Returns:
    The step of `workdir`'s latest checkpoint (None: none, or `fresh`).

  Raises:
    cli_config.ConfigError: naming what is refused.
  """
  with cli_config.user_errors():
    method, training = cli_config.method_and_training(config)
    check_target(config, method, training, sharding.make_mesh(**config.mesh))
    return workdirs.saved_step(config, workdir, fresh=fresh)


# Fields of a target's section that must be positive when it is trained.
_POSITIVE_TARGET_FIELDS = ("steps", "batch_size", "lr")


def check_target(config: ml_collections.ConfigDict, method, training,
                 mesh=None) -> None:
  """Checks `config.target` and `method`, `training` and `mesh` against the
  target as configured but untrained (its initial params, or those at
  `target.path`), as `decompose` checks the trained one."""
  t = config.target
  module = targets.get(t.name)
  if t.path and not os.path.isfile(t.path):
    raise ValueError(f"target.path={t.path!r}: no such file")
  for k in () if t.path else getattr(module, "TRAIN", ()):
    if k in _POSITIVE_TARGET_FIELDS and not t[k] > 0:
      raise ValueError(f"target.{k} must be positive, got {t[k]!r}")
  params = targets.template(module, t)
  if t.path:
    with open(t.path, "rb") as f:
      params = flax.serialization.from_bytes(params, f.read())
  sample_fn = targets.sample_fn(module, t)
  with _quietly():
    target = api.make_target(targets.apply_fn(module), params,
                             config.include, has_aux=module.HAS_AUX,
                             log=False, sample_fn=sample_fn,
                             compute_dtype=training.compute_dtype)
    api.check_inputs(method, target, sample_fn, training, mesh)


@contextlib.contextmanager
def _quietly():
  """absl logging at ERROR inside: a check's notes and warnings are logged
  once, when `decompose` checks the trained target."""
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains the target, decomposes it, writes the outputs; returns summary.

  Every option is checked first (`check_run`: a `ConfigError`), before
  anything is trained or written. Resumes from the latest checkpoint in
  `workdir/checkpoints` that can be read, if there is one (and the saved
  config agrees, or asks for more steps where `check_resume` allows), so
  a run started again after an interruption ends where an uninterrupted
  one would.
  """
  return run_checked(config, workdir, check_run(config, workdir))


def run_checked(config: ml_collections.ConfigDict, workdir: str,
                step: int | None) -> dict:
  """`train_and_evaluate` once `check_run` has passed and given `step`, the
  checkpoint to resume from (the command line checks before `--fresh`)."""
  os.makedirs(workdir, exist_ok=True)
  run_config = config
  config = workdirs.reload_saved_target(workdir, config, step)
  workdirs.cut_metrics_log(workdir, step)
  if runlog.is_writer():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(run_config.to_json_best_effort(indent=2))
  apply_fn, params, sample_fn, has_aux = make_target(
      config.target, config.seed, workdir)
  events = workdirs.new_events(workdir, step, config.steps)
  with runlog.RunLog(workdir, append=True, resumed_at=step,
                     events=events) as log:
    method, training = cli_config.method_and_training(
        config, callback=log.write, mesh=sharding.make_mesh(**config.mesh),
        checkpoint_dir=os.path.join(workdir, "checkpoints"))
    t0 = time.perf_counter()
    result = api.decompose(apply_fn, params, sample_fn,
                           include=config.include, method=method,
                           training=training, has_aux=has_aux)
    seconds = time.perf_counter() - t0
    # Saved first: nothing trained is lost to an error in what follows.
    export.save(result, os.path.join(workdir, "decomposition"),
                config=json.loads(run_config.to_json_best_effort()))
    summary = summarize(result, resumed_at=step, total_seconds=seconds)
    if "evaluation_error" in result.metrics:
      return evaluation_failed(workdir, summary)
    return write_outputs(config, workdir, result, sample_fn, summary, log)


def evaluation_failed(workdir: str, summary: dict) -> dict:
  """Writes `summary.json` (the run's timings and the error) and raises:
  the final evaluation failed after training, and the analyses would ask
  it again.

  Raises:
    RuntimeError: naming the error and where the decomposition is kept.
  """
  if runlog.is_writer():
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  raise RuntimeError(
      f"the final evaluation failed after training "
      f"({summary['evaluation_error']}); the trained decomposition is "
      f"saved in {os.path.join(workdir, 'decomposition')} (export.load) "
      f"and the final checkpoint in {os.path.join(workdir, 'checkpoints')}:"
      f" a run started again in this workdir evaluates it without "
      f"training")


def summarize(result: api.Decomposition, resumed_at: int | None = None,
              **extra) -> dict:
  """The final metrics, `extra`, and the run's timings over all its
  sessions (`timings`): `wall_seconds` of training and its median
  `steps_per_s`, which a restart keeps; `extra`'s `total_seconds` (this
  session's) gains the training of the sessions before it (up to the
  checkpoint `resumed_at`)."""
  seconds, rate = workdirs.timings(result.history)
  if "total_seconds" in extra:
    extra["total_seconds"] += workdirs.timings(result.history,
                                               resumed_at or 0)[0]
  return dict(result.metrics, **extra, wall_seconds=seconds,
              steps_per_s=rate)


def report_sample(config: ml_collections.ConfigDict) -> tuple[jax.Array,
                                                               dict]:
  """`(key, {batch_size, n_batches})`: the fresh examples that the
  summary, the top inputs and the diagnostics of a run all describe."""
  return jax.random.PRNGKey(config.seed + 3), dict(
      batch_size=min(config.batch_size, 1024),
      n_batches=min(4, config.eval_batches))


def describe_components(config: ml_collections.ConfigDict,
                        result: api.Decomposition, sample_fn,
                        workdir: str) -> dict:
  """Writes `summary.md` (every component and, for vector inputs, its top
  inputs), `summary.png` and `top_inputs.png` (with `config.figures`), logs
  the table; returns the summary as a dict. The table and the top inputs
  are of one sample (`report_sample`), so their frequencies agree."""
  key, opts = report_sample(config)
  s = result.summary(key=key, **opts)
  tops = None
  x = jax.eval_shape(lambda k: sample_fn(k, 1), jax.random.PRNGKey(0))
  if jax.numpy.issubdtype(x.dtype, jax.numpy.floating):  # not tokens
    tops = result.top_inputs(sample_fn, key=key, **opts)
    if config.figures:
      component_figures.plot_top_inputs(
          tops, os.path.join(workdir, "top_inputs.png"),
          what=result.method.SCORE_NAME)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(s.markdown(tops))
  if config.figures:
    component_figures.plot_summary(s, os.path.join(workdir, "summary.png"))
  logging.info("components:\n%s", s.table())
  return s.to_dict()


def write_outputs(config: ml_collections.ConfigDict, workdir: str,
                  result: api.Decomposition, sample_fn, summary: dict,
                  log: runlog.RunLog) -> dict:
  """Writes the factors, the target's analyses and figures (also to `log`'s
  TensorBoard file), `summary.json` and the loss curves (the figures only
  with `config.figures`).

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
      eval_batches=config.eval_batches, figures=config.figures))
  summary["components"] = describe_components(config, result, sample_fn,
                                               workdir)
  key, opts = report_sample(config)
  summary["diagnostics"] = diagnostics.diagnose(result, sample_fn, key,
                                                **opts)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  if config.figures:
    plotting.plot_history(result.history,
                          os.path.join(workdir, "losses.png"))
  step = result.metrics["steps"]
  log.figures(step, workdir)
  x = sample_fn(jax.random.PRNGKey(config.seed + 2), config.batch_size)
  # Every group's scores side by side, each position of a sequence a row.
  groups = summary_lib.activity(result, x).values()
  log.histograms(step, np.concatenate([s for _, s in groups], axis=1),
                 np.concatenate([a for a, _ in groups], axis=1),
                 name=result.method.SCORE_NAME.replace(" ", "_") + "s")
  return summary
