"""Hyperparameter sweeps: many decompositions trained in one compiled program.

    result = decompose_sweep(apply_fn, params, sample_fn, include="W",
                             method=APD(n_components=5, topk=0.211),
                             training=Training(steps=20_000),
                             sweep={"seed": range(8), "topk": (0.15, 0.211),
                                    "simplicity_coeff": (0.3, 0.7)})
    result.runs[i]            # run i's swept values
    result.metrics[i]         # run i's final metrics (as `decompose` gives)
    result.decompositions[i]  # run i as a `Decomposition`

With `params_for_run`, each run decomposes its own target (e.g. one trained
with the run's seed): `params_for_run(run)` gives run i's params, of
`params`' structure and shapes, and they become a runs axis too.

Every combination of the listed values is one run. The runs share the
target, the data sampler and every structural option; what differs between
them (the seed, the learning rate and the method's `SWEEPABLE` numeric
options) is a leading "runs" axis of the train state, of the data keys and
of the method's traced `hypers`. It is `decompose`'s building blocks
(`init_state`, `make_train_step`, `fit`, `evaluate`) with the step `vmap`ped
over that axis, so it checkpoints, resumes and stops on SIGTERM as a single
run does. On a mesh (`training.mesh`, or all devices) the runs axis is
split over its data axis and the components' C axis over its component axis
(runs too large for one device). Run i is the same computation as
`decompose` with run i's values.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Any
from typing import Callable
from typing import Mapping
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from apd_jax.core import target as target_lib
from apd_jax.core.target import ApplyFn
from apd_jax.core.target import SampleFn
from apd_jax.engine import api
from apd_jax.training import checkpoint as ckpt_lib
from apd_jax.training import cpu
from apd_jax.training import sharding
from apd_jax.training.options import Training

Array = jax.Array


def sweepable(method: Any) -> tuple[str, ...]:
  """The names a sweep of `method` may vary: the seed, the learning rate
  and the method's numeric options."""
  return Training.SWEEPABLE + tuple(method.SWEEPABLE)


def grid(sweep: Mapping[str, Sequence[Any]],
         names: Sequence[str]) -> list[dict[str, Any]]:
  """Every combination of the swept values, the last of `names` varying
  fastest.

  Names with no values are not swept. Raises `ValueError` for a name not in
  `names` (the sweepable ones).
  """
  unknown = sorted(set(sweep) - set(names))
  if unknown:
    raise ValueError(f"cannot sweep {unknown}; sweepable: {tuple(names)}")
  swept = [n for n in names if n in sweep and len(sweep[n])]
  return [dict(zip(swept, values, strict=True))
          for values in itertools.product(*(tuple(sweep[n]) for n in swept))]


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """The runs of a sweep, each a full `Decomposition`."""
  runs: list[dict[str, Any]]               # each run's swept values
  decompositions: list[api.Decomposition]  # in the order of `runs`
  wall_seconds: float                      # training, all runs together

  @property
  def metrics(self) -> list[dict[str, Any]]:
    return [d.metrics for d in self.decompositions]

  def __repr__(self) -> str:
    values = {}
    for run in self.runs:
      for k, v in run.items():
        values.setdefault(k, set()).add(v)
    swept = ", ".join(f"{k}: {len(v)} value{'s' * (len(v) != 1)}"
                      for k, v in values.items())
    method = (type(self.decompositions[0].method).__name__
              if self.decompositions else "")
    return (f"SweepResult({method}, {len(self.runs)} runs over {{{swept}}}, "
            f"{self.wall_seconds:.1f} s; .runs, .decompositions, .metrics, "
            f".best(metric))")

  def best(self, metric: str, mode: str = "min") -> int:
    """Index of the run with the lowest (`mode='min'`) or highest metric."""
    return best_index([m.get(metric, math.nan) for m in self.metrics], mode)


def best_index(values: Sequence[float], mode: str = "min") -> int:
  """Index of the lowest (`mode='min'`) or highest value; non-finite values
  never win (ties: the first)."""
  if mode not in ("min", "max"):
    raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
  sign = 1.0 if mode == "min" else -1.0
  scores = [sign * float(v) for v in values]
  return int(np.argmin([s if math.isfinite(s) else math.inf
                        for s in scores]))


def _pad(tree, pad):
  """`tree` with its runs axis extended by `pad` copies of run 0."""
  return jax.tree.map(
      lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]), tree)


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _run_targets(target, runs, params_for_run, compute_dtype):
  """Each run's `Target`: `target`, or one with `params_for_run(run)`
  (cast up to `compute_dtype` as `target`'s were), checked against
  `target.params`' structure and shapes."""
  if params_for_run is None:
    return [target] * len(runs)
  want = jax.tree.map(lambda a: (np.shape(a), jnp.result_type(a)),
                      target.params)
  out = []
  for run in runs:
    p = target_lib.upcast(params_for_run(run), compute_dtype)
    got = jax.tree.map(lambda a: (np.shape(a), jnp.result_type(a)), p)
    if got != want:
      raise ValueError(f"params_for_run({run}) gives params unlike "
                       f"`params`: {got} vs {want}")
    out.append(dataclasses.replace(target, params=p))
  return out


def check_runs(method: Any, training: Training, runs: list[dict],
               mesh: jax.sharding.Mesh | None = None) -> None:
  """Checks every run's values as its method and `Training` would, and
  each C against `mesh`'s component axis (the runs, not the batch, go on
  its data axis); nothing is built."""
  method.check_runs(runs, training.batch_size)
  for run in runs:
    training.replace(**{k: v for k, v in run.items()
                        if k in Training.SWEEPABLE})
  if mesh is not None:
    for c in api.component_counts(method):
      sharding.check_sizes(mesh, batch_size=None, n_components=c)


def decompose_sweep(apply_fn: ApplyFn, params: Any, sample_fn: SampleFn, *,
                    include: str, sweep: Mapping[str, Sequence[Any]],
                    method: Any = None, training: Training | None = None,
                    has_aux: bool = False,
                    params_for_run: Callable[[dict], Any] | None = None,
                    **options) -> SweepResult:
  """Trains every combination of `sweep`'s values together; see the module.

  Args:
    apply_fn: as for `decompose`, and so are `params`, `sample_fn`,
      `include`, `method`, `training`, `has_aux` and `**options`.
      `training.callback` is called as `callback(step, records)`,
      `records[i]` being run i's record; `training.mesh`'s devices
      (default: all) share the runs axis.
    sweep: `{name: values}` for names in `sweepable(method)`; each run takes
      one value of every name and the method's or training's for the rest.
    params_for_run: `run -> params` (`run` a dict of the run's swept
      values), each run's own target; default: `params` for every run.

  Returns:
    A `SweepResult`; a run whose loss became non-finite is kept, with
    `metrics['finite'] = False`.
  """
  method, training = api.split_options(method, training, options)
  if training.cpu_tweaks:
    cpu.apply_tweaks()
  runs = grid(sweep, sweepable(method))
  mesh = training.mesh
  if mesh is None and jax.device_count() > 1:
    mesh = sharding.make_mesh()
  check_runs(method, training, runs, mesh)
  # One static method for the program; the runs' numbers come as hypers.
  static = method.bound(runs)
  target = api.make_target(apply_fn, params, include, has_aux=has_aux,
                           log=training.progress, sample_fn=sample_fn,
                           compute_dtype=training.compute_dtype)
  api.check_inputs(static, target, sample_fn, training)
  run_targets = _run_targets(target, runs, params_for_run,
                             training.compute_dtype)
  seeds = [r.get("seed", training.seed) for r in runs]
  states = [api.init_state(method, t, training, seed=s, sample_fn=sample_fn)
            for s, t in zip(seeds, run_targets, strict=True)]
  plan = static.plan(target, sample_fn, training.batch_size,
                     states[0].components)
  hypers = _stack([static.hypers(**{**{n: getattr(method, n) for n in
                                       method.SWEEPABLE}, **run})
                   ._replace(lr_scale=run.get("lr", training.lr)
                             / training.lr) for run in runs])
  hypers = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), hypers)
  keys = _stack([api.run_keys(s)[1] for s in seeds])
  n = len(runs)
  # The target's params are an argument of the program (not constants in
  # it): with a runs axis where each run has its own, else shared.
  own_params = params_for_run is not None
  runs_args = (keys, hypers) + (
      (_stack([t.params for t in run_targets]),) if own_params else ())
  shared = None if own_params else target.params

  def step(state, key, hyper, target_params):
    own = dataclasses.replace(target, params=target_params)
    return api.make_train_step(static, plan, own, sample_fn, training)(
        state, key, hyper)

  states, state_shardings = _stack(states), None
  if mesh is not None:  # runs over `data`, each run's C over `component`
    pad = -n % mesh.shape[sharding.DATA]
    state_shardings = sharding.train_state(
        mesh, states, api.optimizer(static, training), runs=True)
    states = sharding.put(_pad(states, pad), state_shardings)
    runs_args = sharding.put(_pad(runs_args, pad), jax.tree.map(
        lambda _: sharding.batch(mesh), runs_args))
    shared = sharding.put(shared, sharding.replicated(mesh))
  args = (runs_args, shared)

  def sweep_step(states, args):
    runs_args, shared = args
    if own_params:
      return jax.vmap(step)(states, *runs_args)
    return jax.vmap(step, in_axes=(0, 0, 0, None))(states, *runs_args,
                                                    shared)

  checkpoints, histories = None, None
  if training.checkpoint_dir:
    checkpoints = ckpt_lib.Checkpoints(training.checkpoint_dir,
                                       every=training.checkpoint_every,
                                       keep=training.keep_checkpoints)
    if checkpoints.latest_step() is not None:
      states, histories = checkpoints.restore(states)
      logging.info("sweep resumed from the checkpoint at step %d in %s",
                   int(states.step[0]), checkpoints.directory)
  t0 = time.perf_counter()
  try:
    states, histories = api.fit(
        states, sweep_step, args, steps=training.steps,
        log_every=training.log_every,
        print_every=training.print_every, callback=training.callback,
        state_shardings=state_shardings,
        checkpoints=checkpoints, history=histories, n_runs=n,
        progress=training.progress)
  finally:
    if checkpoints is not None:
      checkpoints.close()
  wall = time.perf_counter() - t0

  results = []
  for i, run in enumerate(runs):
    comps = jax.tree.map(lambda a, i=i: jnp.asarray(a[i]), states.components)
    run_method = method.replace(**{k: v for k, v in run.items()
                                   if k in method.SWEEPABLE})
    finite = all(math.isfinite(v) for r in histories[i]
                 for k, v in r.items() if k != "step")
    extra = dict(wall_seconds=wall, finite=finite)
    if finite:
      d = api.finish(run_method, plan, run_targets[i], static.project(comps),
                     histories[i], sample_fn, api.run_keys(seeds[i])[2],
                     training, **extra)
    else:
      d = api.Decomposition(run_targets[i], run_method, plan, comps,
                            dict(steps=training.steps, **extra),
                            histories[i], sample_fn)
    results.append(d)
  return SweepResult(runs, results, wall)
