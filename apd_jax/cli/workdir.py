"""What a run's workdir holds across sessions: whether a run may resume
from it (`check_resume`: the same settings, or more steps where the
schedule allows), what `--fresh` deletes, the metrics log cut back to the
checkpoint, and the run's timings over every session.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil

import ml_collections
import numpy as np
from absl import logging

from apd_jax import methods
from apd_jax.cli import config as config_lib
from apd_jax.cli import runlog
from apd_jax.training import checkpoint
from apd_jax.training import distributed
from apd_jax.training import optim

# Fields that may change when a run is resumed: where and how often it
# saves, on which devices it runs, and whether it draws figures.
RESUMABLE_CHANGES = ("mesh", "checkpoint_every", "keep_checkpoints",
                     "figures")


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
  old = _saved(workdir)
  if old is None:
    return
  new = _flatten(json.loads(config.to_json_best_effort()))
  differ = _differences(old, new)
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


def _saved(workdir: str) -> dict | None:
  """The (flattened) config saved in `workdir/config.json`, or None."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return _flatten(json.load(f))


def _differences(old: dict, new: dict) -> list[str]:
  """The (flattened) fields in which `new` differs from `old`, leaving out
  `RESUMABLE_CHANGES`; an option `old` lacks (added since) ran at its
  default."""
  default = _flatten(json.loads(config_lib.default_config(
      new.get("method.name", "apd")).to_json_best_effort()))
  return sorted(k for k in set(old) | set(new)
                if old.get(k, default.get(k)) != new.get(k)
                and k.split(".")[0] not in RESUMABLE_CHANGES)


def same_settings(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether `workdir` holds a run of `config`'s settings (those a resumed
  run may change aside)."""
  old = _saved(workdir)
  return old is not None and not _differences(old, _flatten(json.loads(
      config.to_json_best_effort())))


def settings_match(saved: dict, config: ml_collections.ConfigDict) -> bool:
  """`same_settings` for a config saved elsewhere (its JSON, as read)."""
  return not _differences(_flatten(saved), _flatten(json.loads(
      config.to_json_best_effort())))


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
                        kind=flat["lr_schedule"],
                        final_frac=flat.get("lr_final_frac", 0.0))
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


def new_events(run_dir: str, step: int | None, steps: int) -> bool:
  """Whether a run restarted at checkpoint `step` of `steps` writes a new
  TensorBoard event file: not when it is finished and has one already
  (its scalars, figures and histograms would be there twice)."""
  return step != steps or not runlog.event_files(run_dir)


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
