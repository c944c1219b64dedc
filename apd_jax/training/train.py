"""One pure train step, and the loop that runs it compiled.

`train_step(state, key) -> (state, metrics)` draws its batch on device from
`fold_in(key, state.step)`, so a run is a function of its seeds alone, and a
run resumed from a checkpointed state continues the same data stream. The loop
compiles `log_every` steps into one program (`lax.scan` over the same step) and
returns to Python only to log, checkpoint, or stop for a preemption, so
dispatch costs nothing on small models. Given a mesh, the batch is sharded over
its data axis and the state keeps the shardings of `sharding.train_state`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from apd_jax.core.target import SampleFn
from apd_jax.core.target import Target
from apd_jax.training import checkpoint as ckpt_lib
from apd_jax.training import cpu
from apd_jax.training import distributed
from apd_jax.training import sharding

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TrainState:
  """A run's state: the step, the method's trained parameters, the
  optimiser's state and, for a method with state of its own beside its
  parameters (`method.init_state`), that state.

  A pytree; `method_state` is left out of it where it is None, so the
  state of a method without one is laid out (and checkpointed) as before
  the field existed."""
  step: Array                      # [] int32
  components: Any                  # the method's parameters (APD: factors)
  opt_state: optax.OptState
  method_state: Any = None         # e.g. persistent adversarial sources

  @classmethod
  def create(cls, params: Any, optimizer: optax.GradientTransformation,
             method_state: Any = None) -> TrainState:
    """Step 0 with `params`, a fresh optimiser state and `method_state`."""
    return cls(step=jnp.zeros((), jnp.int32), components=params,
               opt_state=optimizer.init(params), method_state=method_state)

  def replace(self, **values: Any) -> TrainState:
    return dataclasses.replace(self, **values)


_FIELDS = ("step", "components", "opt_state", "method_state")


def _state_children(state: TrainState):
  n = 3 if state.method_state is None else 4
  return [(jax.tree_util.GetAttrKey(f), getattr(state, f))
          for f in _FIELDS[:n]], n


jax.tree_util.register_pytree_with_keys(
    TrainState, _state_children, lambda n, children: TrainState(*children),
    lambda state: ([c for _, c in _state_children(state)[0]],
                   _state_children(state)[1]))


def make_train_step(method: Any, plan: Any, target: Target,
                    sample_fn: SampleFn, batch_size: int,
                    optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh | None = None,
                    steps: int | None = None
                    ) -> Callable[..., tuple[TrainState, dict]]:
  """The pure step of any method: sample, take the loss's gradients, update.

  `train_step(state, key, hypers=None) -> (state, metrics)` draws its batch
  from `fold_in(key, state.step)` and the loss's own randomness from a key
  folded from that. With a `mesh`, the batch is sharded over its data axis.
  `hypers` (the method's traced numeric options, e.g. `apd_objective.Hypers`)
  override the method's values and scale the updates by `hypers.lr_scale`.
  With `steps`, the loss gets `progress = step / steps` (else None).

  A method with an `update` makes the step its own after the batch is drawn:
  `method.update(params, opt_state, method_state, x, target, plan, key,
  hypers, progress, optimizer) -> (params, opt_state, method_state,
  metrics)` (e.g. state updated by its own ascent beside the descent;
  `hypers.lr_scale` is then its to apply).
  """

  own_update = getattr(method, "update", None)

  def train_step(state: TrainState, key: Array, hypers: Any = None):
    step_key = jax.random.fold_in(key, state.step)
    x = sample_fn(step_key, batch_size)
    if mesh is not None:
      x = sharding.constrain_batch(x, mesh)
    progress = None if not steps else state.step / steps
    if own_update is not None:    # the method's own update (and state)
      params, opt_state, method_state, metrics = own_update(
          state.components, state.opt_state, state.method_state, x, target,
          plan, jax.random.fold_in(step_key, 1), hypers, progress, optimizer)
      return TrainState(state.step + 1, params, opt_state,
                        method_state), metrics
    params = method.project(state.components)
    grad_fn = jax.value_and_grad(method.loss, has_aux=True)
    (loss, metrics), grads = grad_fn(params, x, target, plan,
                                     jax.random.fold_in(step_key, 1), hypers,
                                     progress)
    if "loss" not in metrics:       # the loop logs it whatever the method
      metrics = {"loss": loss, **metrics}
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    if hypers is not None:
      updates = jax.tree.map(lambda u: hypers.lr_scale * u, updates)
    params = optax.apply_updates(params, updates)
    return TrainState(state.step + 1, params, opt_state,
                      state.method_state), metrics

  return train_step


def make_runner(train_step, state_shardings: Any = None
                ) -> Callable[[TrainState, Any, int], Any]:
  """`run(state, args, n)`: n steps `train_step(state, args)` in one compiled
  program (state donated).

  Returns the new state (in `state_shardings`, if given) and each metric
  averaged over the n steps (replicated).
  """

  def run(state, args, n):
    def body(s, _):
      return train_step(s, args)
    state, metrics = jax.lax.scan(body, state, None, length=n)
    return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

  options = dict(cpu.compiler_options())
  if state_shardings is None:
    return jax.jit(run, static_argnums=2, donate_argnums=0,
                   compiler_options=options)
  mesh = jax.tree.leaves(state_shardings)[0].mesh
  return jax.jit(run, static_argnums=2, donate_argnums=0,
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 compiler_options=options)


def progress_line(message: str, *args: Any) -> None:
  """A progress line: through absl logging where it shows INFO (the command
  line), else on stderr (a script or notebook calling `decompose`)."""
  if logging.level_info():
    logging.info(message, *args)
  else:
    print(message % args, file=sys.stderr, flush=True)


def fit(state: Any, train_step, args: Any, *, steps: int,
        log_every: int = 100, print_every: int | None = None,
        callback: Callable[..., None] | None = None,
        state_shardings: Any = None,
        checkpoints: ckpt_lib.Checkpoints | None = None,
        history: list | None = None, n_runs: int | None = None,
        progress: bool = True) -> tuple[Any, list]:
  """Runs `train_step(state, args)` until `state.step == steps`.

  Every `log_every` steps it records the step, the losses averaged since the
  last log, steps/s and the elapsed time, appends the record to the returned
  history (which starts from `history`, e.g. a restored one) and passes it to
  `callback(step, record)`. With `progress` it logs a line with the ETA at
  the first and the last log and whenever `print_every` steps (default
  `log_every`) have passed since the last line.

  With `n_runs` (a sweep: the state and metrics have a leading runs axis,
  possibly padded beyond `n_runs`) each record is a list with one record per
  run and the history one list per run; a run whose loss becomes non-finite
  is reported and left to run (it cannot disturb the others).

  With `checkpoints`, the state and history are saved every
  `checkpoints.every` steps (a multiple of `log_every`) and at the end, and a
  preemption (SIGTERM) saves them before raising `distributed.Preempted`.

  Raises:
    FloatingPointError: a single run's loss became non-finite (naming the
      steps, the terms and the last good checkpoint, which is kept).
    distributed.Preempted: after saving, if the run was told to stop.
  """
  run = make_runner(train_step, state_shardings)
  if history is None:
    history = [] if n_runs is None else [[] for _ in range(n_runs)]
  history = [list(h) for h in history] if n_runs else list(history)
  t0 = last = time.perf_counter()
  done = int(jax.device_get(state.step).reshape(-1)[0])
  n_logs, bad, printed = 0, set(), done
  print_every = print_every or log_every
  watch = distributed.PreemptionWatch(enabled=checkpoints is not None)
  with watch:
    while done < steps:
      n = min(log_every, steps - done)
      state, metrics = run(state, args, n)
      metrics = jax.device_get(metrics)
      done += n
      n_logs += 1
      now = time.perf_counter()
      rate = n / max(now - last, 1e-9)
      last = now
      extra = dict(steps_per_s=rate, elapsed_s=now - t0)
      if n_runs is None:
        metrics = {k: float(v) for k, v in metrics.items()}
        record = dict(step=done, **metrics, **extra)
        if not all(math.isfinite(v) for v in metrics.values()):
          _raise_non_finite(done - n + 1, done, metrics, checkpoints)
        history.append(record)
      else:
        metrics = {k: np.asarray(v)[:n_runs] for k, v in metrics.items()}
        record = [dict(step=done, **{k: float(v[i])
                                     for k, v in metrics.items()}, **extra)
                  for i in range(n_runs)]
        for i, r in enumerate(record):
          history[i].append(r)
          if i not in bad and not math.isfinite(r["loss"]):
            bad.add(i)
            logging.warning("run %d: non-finite loss in steps %d..%d", i,
                            done - n + 1, done)
      if progress and (n_logs == 1 or done == steps
                       or done // print_every > printed // print_every):
        printed = done
        _log_progress(done, steps, metrics, rate, n_logs == 1, n_runs)
      if callback is not None:
        callback(done, record)
      if checkpoints is None:
        continue
      stop = watch.requested(n_logs)
      if stop or done == steps or checkpoints.due(done):
        # a copy: the save is asynchronous and the history grows on
        checkpoints.save(done, state, [list(h) for h in history] if n_runs
                         else list(history))
      if stop and done < steps:
        checkpoints.wait()
        raise distributed.Preempted(
            f"preempted: saved a checkpoint at step {done} in "
            f"{checkpoints.directory}; run again to resume")
  if checkpoints is not None:
    checkpoints.wait()
  return state, history


def _log_progress(done, steps, metrics, rate, first, n_runs):
  """A progress line: the loss, the other terms, and `L0` where the
  method's metrics hold an `l0` (`methods/base.py`)."""
  compile_note = " (incl. compile)" if first else ""
  eta = (steps - done) / rate
  l0 = metrics.get("l0")
  if n_runs is None:
    terms = "".join(f"  {k} {float(v):.3g}" for k, v in metrics.items()
                    if k not in ("loss", "l0"))
    l0_note = "" if l0 is None else f"  L0 {float(l0):.2f}"
    progress_line(
        f"step %d/%d  loss %.4g{terms}{l0_note}  %.1f steps/s%s  ETA %.0fs",
        done, steps, metrics["loss"], rate, compile_note, eta)
    return
  loss = metrics["loss"]
  l0_note = "" if l0 is None else f"  L0 median {np.nanmedian(l0):.2f}"
  progress_line(
      f"step %d/%d  %d runs  loss min %.4g  median %.4g  max %.4g{l0_note}"
      f"  %.1f steps/s (%.0f run-steps/s)%s  ETA %.0fs", done, steps,
      n_runs, np.nanmin(loss), np.nanmedian(loss), np.nanmax(loss), rate,
      rate * n_runs, compile_note, eta)


def _raise_non_finite(first: int, last: int, metrics: dict,
                      checkpoints: ckpt_lib.Checkpoints | None):
  terms = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
  message = f"non-finite loss in steps {first}..{last}: {terms}"
  if checkpoints is not None:
    checkpoints.wait()
    good = checkpoints.latest_step()
    message += (f"; the last good checkpoint (step {good}) is kept in "
                f"{checkpoints.directory}" if good is not None
                else "; no checkpoint was saved before it")
  raise FloatingPointError(message)
