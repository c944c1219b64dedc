"""One pure train step, and the loop that runs it compiled.

`train_step(state, key) -> (state, metrics)` draws its batch on device from
`fold_in(key, state.step)`, so a run is a function of its seeds alone, and a
run resumed from a checkpointed state continues the same data stream. The loop
compiles `chunk` steps into one program (`lax.scan` over the same step) and
returns to Python only to log, checkpoint, or stop for a preemption, so
dispatch costs nothing on small models. Given a mesh, the batch is sharded over
its data axis and the state keeps the shardings of `sharding.train_state`.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from absl import logging

from apd_jax import checkpoint as ckpt_lib
from apd_jax import components as comp_lib
from apd_jax import distributed
from apd_jax import objective
from apd_jax import optim
from apd_jax import sharding
from apd_jax.target import SampleFn
from apd_jax.target import Target

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array                      # [] int32
  components: comp_lib.Components
  opt_state: optax.OptState


def init_state(comps: comp_lib.Components,
               optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), components=comps,
                    opt_state=optimizer.init(comps))


def make_train_step(target: Target, settings: objective.Settings,
                    sample_fn: SampleFn, batch_size: int,
                    optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh | None = None
                    ) -> Callable[[TrainState, Array], tuple[TrainState, dict]]:
  """The pure APD step: sample, attribute, mask, take gradients, update.

  With a `mesh`, the batch is sharded over its data axis. The step takes
  optional `hypers` (`objective.Hypers`, traced) that override the numeric
  settings and scale the updates by `hypers.lr_scale`.
  """

  def train_step(state: TrainState, key: Array,
                 hypers: objective.Hypers | None = None):
    step_key = jax.random.fold_in(key, state.step)
    x = sample_fn(step_key, batch_size)
    if mesh is not None:
      x = sharding.constrain_batch(x, mesh)
    comps = optim.renormalize(state.components, settings.unit_norm_matrices)
    grad_fn = jax.value_and_grad(objective.loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(comps, x, target, settings,
                                  jax.random.fold_in(step_key, 1), hypers)
    updates, opt_state = optimizer.update(grads, state.opt_state, comps)
    if hypers is not None:
      updates = jax.tree.map(lambda u: hypers.lr_scale * u, updates)
    comps = optax.apply_updates(comps, updates)
    return TrainState(state.step + 1, comps, opt_state), metrics

  return train_step


# XLA:CPU's XNNPACK-based ("ynn") fusions made the residual-MLP steps 1.3-1.6x
# slower (a product-and-reduce fusion took half the rank-1 step; see
# benchmark.py), so the step is compiled without them on CPU.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.lru_cache(maxsize=None)
def compiler_options() -> tuple[tuple[str, str], ...]:
  """The XLA options for the compiled steps: `_CPU_OPTIONS` on a CPU backend
  whose XLA knows them, else none."""
  if jax.default_backend() != "cpu":
    return ()
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS)(0.0)
  except Exception:  # noqa: BLE001 - an XLA without the option
    return ()
  return tuple(_CPU_OPTIONS.items())


def make_runner(train_step, state_shardings: Any = None
                ) -> Callable[[TrainState, Array, int], Any]:
  """`run(state, key, n)`: n steps in one compiled program (state donated).

  Returns the new state (in `state_shardings`, if given) and each metric
  averaged over the n steps (replicated).
  """

  def run(state, key, n):
    def body(s, _):
      return train_step(s, key)
    state, metrics = jax.lax.scan(body, state, None, length=n)
    return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

  options = dict(compiler_options())
  if state_shardings is None:
    return jax.jit(run, static_argnums=2, donate_argnums=0,
                   compiler_options=options)
  mesh = jax.tree.leaves(state_shardings)[0].mesh
  return jax.jit(run, static_argnums=2, donate_argnums=0,
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 compiler_options=options)


def fit(state: TrainState, train_step, key: Array, *, steps: int,
        log_every: int = 1000,
        callback: Callable[[int, dict], None] | None = None,
        state_shardings: Any = None,
        checkpoints: ckpt_lib.Checkpoints | None = None,
        history: list[dict] | None = None,
        ) -> tuple[TrainState, list[dict]]:
  """Runs `train_step` until `state.step == steps`, logging progress.

  Every `log_every` steps it logs the step, the losses averaged since the last
  log, steps/s and the ETA, appends them to the returned history (which
  starts from `history`, e.g. a restored one) and passes them to
  `callback(step, record)`.

  With `checkpoints`, the state and history are saved every
  `checkpoints.every` steps (a multiple of `log_every`) and at the end, and a
  preemption (SIGTERM) saves them before raising `distributed.Preempted`.

  Raises:
    FloatingPointError: if a loss becomes non-finite (naming the steps, the
      terms and the last good checkpoint, which is kept).
    distributed.Preempted: after saving, if the run was told to stop.
  """
  run = make_runner(train_step, state_shardings)
  history = list(history or [])
  t0 = last = time.perf_counter()
  done = int(state.step)
  n_logs = 0
  watch = distributed.PreemptionWatch(enabled=checkpoints is not None)
  with watch:
    while done < steps:
      n = min(log_every, steps - done)
      state, metrics = run(state, key, n)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      done += n
      n_logs += 1
      now = time.perf_counter()
      rate = n / max(now - last, 1e-9)
      last = now
      record = dict(step=done, **metrics, steps_per_s=rate,
                    elapsed_s=now - t0)
      if not all(math.isfinite(v) for v in metrics.values()):
        _raise_non_finite(done - n + 1, done, metrics, checkpoints)
      history.append(record)
      eta = (steps - done) / rate
      logging.info(
          "step %d/%d  loss %.4g  faith %.3g  min %.3g  simp %.3g  L0 %.2f  "
          "%.1f steps/s%s  ETA %.0fs", done, steps, metrics["loss"],
          metrics["faithfulness"], metrics["minimality"],
          metrics["simplicity"], metrics["l0"], rate,
          " (incl. compile)" if n_logs == 1 else "", eta)
      if callback is not None:
        callback(done, record)
      if checkpoints is None:
        continue
      stop = watch.requested(n_logs)
      if stop or done == steps or checkpoints.due(done):
        checkpoints.save(done, state, list(history))
      if stop and done < steps:
        checkpoints.wait()
        raise distributed.Preempted(
            f"preempted: saved a checkpoint at step {done} in "
            f"{checkpoints.directory}; run again to resume")
  if checkpoints is not None:
    checkpoints.wait()
  return state, history


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
