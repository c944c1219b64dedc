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

import contextlib
import glob
import json
import math
import os
import shutil
import time

import flax.serialization
import jax
import ml_collections
import numpy as np
from absl import logging

from apd_jax import methods
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
from apd_jax.training import optim
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
# Fields that may change where the steps already taken would have been the
# same under the new values (`why_not_continue`): a run goes on to more
# steps.
CONTINUABLE_CHANGES = ("steps", "warmup_frac")


def check_resume(workdir: str, config: ml_collections.ConfigDict,
                 step: int | None = None) -> None:
  """Raises `ValueError` naming the fields in which `config` differs from
  the one saved in `workdir/config.json` (a restart must not mix runs).

  `steps` and `warmup_frac` may differ where the run, checkpointed at
  `step`, goes on as a run started with the new values would
  (`why_not_continue`), e.g. to more steps on a constant rate.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = _flatten(json.load(f))
  new = _flatten(json.loads(config.to_json_best_effort()))
  differ = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k)
                  and k.split(".")[0] not in RESUMABLE_CHANGES)
  if differ and set(differ) <= set(CONTINUABLE_CHANGES):
    step = old["steps"] if step is None else step
    why = why_not_continue(old, new, step)
    if why is not None:
      keep = ", ".join(f"--config.{k}={old[k]}" for k in differ)
      raise ValueError(
          f"{workdir} holds a run of {old['steps']} steps, checkpointed at "
          f"step {step}, that cannot go on with steps={new['steps']}: "
          f"{why}; keep {keep}, or pass --fresh to start again")
    logging.info("%s: the run of %d steps goes on from step %d to %d steps",
                 workdir, old["steps"], step, new["steps"])
    return
  if differ:
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                      for k in differ)
    raise ValueError(
        f"{workdir} holds a run with other settings ({shown}); resume it "
        f"with its own settings, use another --workdir, or pass --fresh to "
        f"delete its checkpoints and start again")


def why_not_continue(old: dict, new: dict, step: int) -> str | None:
  """Why a run of the (flattened) config `old`, checkpointed at `step`,
  cannot go on under `new` as a run started with `new` would (None: it
  can): its learning rate over the steps taken must stay the same (a
  cosine schedule, or a warm-up of `warmup_frac` of the steps, depends on
  `steps`), and so must its loss (SPD's annealed `importance_p`)."""
  if step > new["steps"]:
    return f"step {step} is past the last step"
  if new.get("method.importance_p_final") is not None:
    return "method.importance_p_final anneals importance_p over the steps"
  if np.array_equal(_rates(old, step), _rates(new, step)):
    return None
  if new["lr_schedule"] != "constant":
    return (f"lr_schedule={new['lr_schedule']!r} spreads over all the "
            f"steps, so the rate of the steps taken would change")
  (f_old, w_old), (f_new, w_new) = _warmup(old), _warmup(new)
  fracs = f"{f_old}" if f_old == f_new else f"{f_old} -> {f_new}"
  why = (f"its warm-up, warmup_frac={fracs} of the steps, would change "
         f"from {w_old} to {w_new} steps")
  for digits in range(1, 7):   # a short warmup_frac giving w_old steps
    frac = round((w_old + 0.5) / new["steps"], digits)
    if np.array_equal(_rates(old, step),
                      _rates(dict(new, warmup_frac=frac), step)):
      return (f"{why}; pass --config.warmup_frac={frac} to keep it at "
              f"{w_old} step{'s' * (w_old != 1)}")
  return why


def _warmup(flat: dict) -> tuple[float, int]:
  """The warm-up fraction of the (flattened) config `flat` and its steps,
  as `optim.schedule` counts them."""
  frac = flat["warmup_frac"]
  if frac is None:
    frac = methods.get(flat["method.name"]).WARMUP_FRAC
  return frac, int(frac * flat["steps"])


def _rates(flat: dict, n: int) -> np.ndarray:
  """The learning rate over steps 0..n-1 of the (flattened) config `flat`,
  relative to `lr`."""
  frac, _ = _warmup(flat)
  rate = optim.schedule(1.0, flat["steps"], warmup_frac=frac,
                        kind=flat["lr_schedule"])
  return np.asarray(rate(np.arange(n)))


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


# What a run (or a sweep) writes to its workdir, but the target's params
# (written again by every run; `target.path` may name them).
OUTPUTS = ("checkpoints", "config.json", "metrics.jsonl",
           "events.out.tfevents.*", "summary.json", "summary.md",
           "summary.png", "top_inputs.png", "top_contexts.txt",
           "top_contexts.html", "components.npz", "components.png",
           "attributions.png", "causal_importances.png", "contributions.png",
           "scrubbing.png", "analysis.npz", "losses.png", "decomposition",
           "runs", "best", "sweep.csv", "sweep.md", "sweep.json",
           "sweep_*.png")


def start_afresh(workdir: str) -> None:
  """Deletes a previous run's outputs in `workdir` (`OUTPUTS`): its
  checkpoints, logs, TensorBoard events, config, summaries, figures and
  export; a run's target (`target_params.msgpack`, `targets/`) stays."""
  if not runlog.is_writer():
    return
  for pattern in OUTPUTS:
    for path in glob.glob(os.path.join(glob.escape(workdir), pattern)):
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)


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
    return saved_step(config, workdir, fresh=fresh)


def saved_step(config: ml_collections.ConfigDict, workdir: str, *,
               fresh: bool = False) -> int | None:
  """The step of `workdir`'s latest checkpoint, if its config agrees (None:
  no checkpoint, or `fresh`: the run starts afresh)."""
  if fresh:
    return None
  step = checkpoint.latest_step(os.path.join(workdir, "checkpoints"))
  if step is not None:
    check_resume(workdir, config, step)
  return step


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
                             log=False, sample_fn=sample_fn)
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
  step = check_run(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  run_config = config
  config = reload_saved_target(workdir, config, step)
  cut_metrics_log(workdir, step)
  if runlog.is_writer():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(run_config.to_json_best_effort(indent=2))
  apply_fn, params, sample_fn, has_aux = make_target(
      config.target, config.seed, workdir)
  with runlog.RunLog(workdir, append=True, resumed_at=step,
                     events=new_events(workdir, step, config.steps)) as log:
    method, training = cli_config.method_and_training(
        config, callback=log.write, mesh=sharding.make_mesh(**config.mesh),
        checkpoint_dir=os.path.join(workdir, "checkpoints"))
    t0 = time.perf_counter()
    result = api.decompose(apply_fn, params, sample_fn,
                           include=config.include, method=method,
                           training=training, has_aux=has_aux)
    summary = summarize(result, resumed_at=step,
                        total_seconds=time.perf_counter() - t0)
    export.save(result, os.path.join(workdir, "decomposition"),
                config=json.loads(run_config.to_json_best_effort()))
    return write_outputs(config, workdir, result, sample_fn, summary, log)


def new_events(run_dir: str, step: int | None, steps: int) -> bool:
  """Whether a run restarted at checkpoint `step` of `steps` writes a new
  TensorBoard event file: not when it is finished and has one already
  (its scalars, figures and histograms would be there twice)."""
  return step != steps or not runlog.event_files(run_dir)


def summarize(result: api.Decomposition, resumed_at: int | None = None,
              **extra) -> dict:
  """The final metrics, `extra`, and the run's timings over all its
  sessions (`timings`): `wall_seconds` of training and its median
  `steps_per_s`, which a restart keeps; `extra`'s `total_seconds` (this
  session's) gains the training of the sessions before it (up to the
  checkpoint `resumed_at`)."""
  seconds, rate = timings(result.history)
  if "total_seconds" in extra:
    extra["total_seconds"] += timings(result.history, resumed_at or 0)[0]
  return dict(result.metrics, **extra, wall_seconds=seconds,
              steps_per_s=rate)


def timings(history: list[dict], upto: int | None = None
            ) -> tuple[float, float]:
  """`(seconds, steps_per_s)` of the training that `history` logs (up to
  step `upto`), over every session of the run (a restart restores the
  history): each log's steps over its rate, summed; and the median rate of
  the logs but each session's first, which includes compiling (its
  `elapsed_s` is its own duration)."""
  seconds, rates, done = 0.0, [], 0
  for r in history:
    if upto is not None and r["step"] > upto:
      break
    took = (r["step"] - done) / r["steps_per_s"]
    seconds, done = seconds + took, r["step"]
    if not math.isclose(r["elapsed_s"], took, rel_tol=1e-6):
      rates.append(r["steps_per_s"])
  rate = float(np.median(rates)) if rates else done / max(seconds, 1e-9)
  return seconds, rate


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
  inputs), `summary.png` and `top_inputs.png`, logs the table; returns the
  summary as a dict. The table and the top inputs are of one sample
  (`report_sample`), so their frequencies agree."""
  key, opts = report_sample(config)
  s = result.summary(key=key, **opts)
  tops = None
  x = jax.eval_shape(lambda k: sample_fn(k, 1), jax.random.PRNGKey(0))
  if jax.numpy.issubdtype(x.dtype, jax.numpy.floating):  # not tokens
    tops = result.top_inputs(sample_fn, key=key, **opts)
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
  key, opts = report_sample(config)
  summary["diagnostics"] = diagnostics.diagnose(result, sample_fn, key,
                                                **opts)
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
