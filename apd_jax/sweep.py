"""Hyperparameter sweeps: many decompositions trained in one compiled program.

    result = decompose_sweep(apply_fn, params, sample_fn, include="W",
                             n_components=5, topk=0.211, steps=20_000,
                             sweep={"seed": range(8), "topk": (0.15, 0.211),
                                    "simplicity_coeff": (0.3, 0.7)})
    result.runs[i]            # run i's swept values
    result.metrics[i]         # run i's final metrics (as `decompose` gives)
    result.decompositions[i]  # run i as a `Decomposition`

Every combination of the listed values is one run. The runs share the
target, the data sampler and every structural setting; what differs between
them (the seed, top-k, the loss coefficients, Schatten p, the learning rate)
is a leading "runs" axis of the train state, of the data keys and of
`objective.Hypers`. The step is `vmap`ped over that axis and `log_every` steps
of it are compiled into one `lax.scan`, so R runs cost one program; with
several devices the runs axis is sharded over them. Run i is the same
computation as `decompose(..., seed=seed_i, topk=topk_i, ...)`.
"""

from __future__ import annotations

import dataclasses
import inspect
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
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from apd_jax import api
from apd_jax import components as comp_lib
from apd_jax import objective
from apd_jax import optim
from apd_jax import selection
from apd_jax import train
from apd_jax.target import ApplyFn
from apd_jax.target import SampleFn
from apd_jax.target import Target

Array = jax.Array
# The values a sweep may vary: the seed and the numeric hyperparameters.
SWEEPABLE = ("seed", "topk", "faithfulness_coeff", "minimality_coeff",
             "simplicity_coeff", "hidden_act_coeff", "schatten_p", "lr")
HYPERS = ("topk", "faithfulness_coeff", "minimality_coeff",
          "simplicity_coeff", "hidden_act_coeff", "schatten_p")


def grid(sweep: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination of the swept values, the last name varying fastest.

  Names with no values are not swept. Raises `ValueError` for a name that
  cannot be swept.
  """
  unknown = sorted(set(sweep) - set(SWEEPABLE))
  if unknown:
    raise ValueError(f"cannot sweep {unknown}; sweepable: {SWEEPABLE}")
  names = [n for n in SWEEPABLE if n in sweep and len(sweep[n])]
  return [dict(zip(names, values, strict=True))
          for values in itertools.product(*(tuple(sweep[n]) for n in names))]


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """The runs of a sweep, each a full `Decomposition`."""
  runs: list[dict[str, Any]]               # each run's swept values
  decompositions: list[api.Decomposition]  # in the order of `runs`
  wall_seconds: float                      # training, all runs together

  @property
  def metrics(self) -> list[dict[str, Any]]:
    return [d.metrics for d in self.decompositions]

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


def _defaults() -> dict[str, Any]:
  sig = inspect.signature(api.decompose)
  return {n: p.default for n, p in sig.parameters.items()
          if p.default is not inspect.Parameter.empty}


def _check(runs, kw):
  """Checks every run's values the way `decompose` checks one run's."""
  for run in runs:
    r = {**kw, **run}
    api._positive(topk=r["topk"], lr=r["lr"], schatten_p=r["schatten_p"])
    api._check_topk(r["topk"], kw["n_components"], kw["batch_size"],
                    kw["batch_topk"])
    if r["batch_topk"]:
      count = int(np.float32(r["topk"]) * np.float32(kw["batch_size"]))
      if count != int(r["topk"] * kw["batch_size"]):
        raise ValueError(
            f"topk={r['topk']}: int(topk*batch_size) differs in float32 "
            f"({count}); choose a topk away from a multiple of 1/batch_size")


def _init(kw, tgt, seed):
  """Run `seed`'s initial components and keys, exactly as `decompose`."""
  weights = tgt.weights
  shapes = {n: tuple(w.shape) for n, w in weights.items()}
  ranks = {n: kw["rank"] or comp_lib.default_rank(shapes[n])
           for n in tgt.names}
  init_key, data_key, eval_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  if kw["init"] == "svd":
    comps = comp_lib.init_svd(init_key, weights,
                              n_components=kw["n_components"], rank=ranks)
  else:
    comps = comp_lib.init_random(init_key, shapes,
                                 n_components=kw["n_components"], rank=ranks,
                                 gain=kw["init_gain"])
  return (optim.renormalize(comps, kw["unit_norm_matrices"]), data_key,
          eval_key)


def _settings(kw, **values) -> objective.Settings:
  return objective.Settings(
      topk=values.get("topk", kw["topk"]), batch_topk=kw["batch_topk"],
      **{n: values.get(n, kw[n]) for n in HYPERS if n != "topk"},
      hidden_acts=kw["hidden_acts"], attribution=kw["attribution_type"],
      attribution_point=kw["attribution_point"],
      attribution_mode=kw["attribution_mode"],
      attribution_projections=int(kw["attribution_projections"]),
      recon=kw["recon"],
      sparsity=kw["sparsity"], lp_p=kw["lp_p"],
      unit_norm_matrices=kw["unit_norm_matrices"])


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _shard(tree, n_runs):
  """Places the leading runs axis over all devices (padding R up to a
  multiple of the device count with copies of run 0)."""
  devices = jax.devices()
  pad = -n_runs % len(devices)
  if len(devices) == 1:
    return tree
  tree = jax.tree.map(
      lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]), tree)
  mesh = jax.sharding.Mesh(np.array(devices), ("runs",))
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("runs")))


def decompose_sweep(apply_fn: ApplyFn, params: Any, sample_fn: SampleFn, *,
                    sweep: Mapping[str, Sequence[Any]],
                    callback: Callable[[int, list[dict]], None] | None = None,
                    **kwargs) -> SweepResult:
  """Trains every combination of `sweep`'s values together; see the module.

  Args:
    apply_fn, params, sample_fn: as for `decompose`.
    sweep: `{name: values}` for names in `SWEEPABLE`; each run takes one value
      of every name and `kwargs` for the rest.
    callback: called as `callback(step, records)` at every log, `records[i]`
      being run i's record (as `decompose`'s callback gets).
    **kwargs: any `decompose` argument except `callback`.

  Returns:
    A `SweepResult`; a run whose loss became non-finite is kept, with
    `metrics['finite'] = False`.
  """
  unknown = sorted(set(kwargs) - set(_defaults()) - {"include",
                                                     "n_components",
                                                     "topk"})
  if unknown:
    raise ValueError(f"unknown decompose arguments {unknown}")
  kw = {**_defaults(), **kwargs}
  runs = grid(sweep)
  _check(runs, kw)
  api._positive(**{n: kw[n] for n in ("n_components", "steps", "batch_size",
                                      "eval_batches", "log_every")})
  p = kw["attribution_projections"]
  forward = kw["attribution_mode"] in ("forward", "lazy")
  if p != int(p) or p < 0 or (p and (kw["attribution_type"] != "gradient"
                                     or forward)):
    raise ValueError(f"attribution_projections={p!r} needs a non-negative "
                     f"integer, gradient attributions and a mode of 'auto' "
                     f"or 'reverse'")
  if not 0 <= kw["warmup_frac"] < 1:
    raise ValueError(f"warmup_frac must be in [0, 1), got {kw['warmup_frac']}")
  names = selection.select_leaves(params, kw["include"])
  api._check_choices(**{n: kw[n] for n in api.CHOICES})
  tgt = Target(apply_fn, params, names, kw["has_aux"])
  hidden = max([abs(r.get("hidden_act_coeff", 0.0)) for r in runs]
               + [kw["hidden_act_coeff"]])
  api._check_activations(tgt, sample_fn, kw["batch_size"],
                         kw["attribution_type"], hidden, kw["hidden_acts"])
  # One static Settings for the program; the numeric values come as Hypers.
  settings = _settings(kw, hidden_act_coeff=hidden, topk=max(
      [r.get("topk", kw["topk"]) for r in runs]))
  inits = [_init(kw, tgt, r.get("seed", kw["seed"])) for r in runs]
  if kw["attribution_mode"] == "auto":
    settings = dataclasses.replace(settings, attribution_mode="forward")
    if kw["attribution_type"] == "gradient":
      settings = api._cheapest_attribution(tgt, settings, inits[0][0],
                                           sample_fn, kw["batch_size"])
  optimizer = optim.make_optimizer(
      kw["lr"], kw["steps"], warmup_frac=kw["warmup_frac"],
      lr_schedule=kw["lr_schedule"],
      unit_norm_matrices=kw["unit_norm_matrices"])
  hypers = objective.Hypers(
      **{n: jnp.array([r.get(n, kw[n]) for r in runs], jnp.float32)
         for n in HYPERS},
      lr_scale=jnp.array([r.get("lr", kw["lr"]) / kw["lr"] for r in runs],
                         jnp.float32))
  step = train.make_train_step(tgt, settings, sample_fn, kw["batch_size"],
                               optimizer)
  states = jax.vmap(lambda c: train.init_state(c, optimizer))(
      _stack([c for c, _, _ in inits]))
  keys = _stack([k for _, k, _ in inits])
  n = len(runs)
  states, keys, hypers = _shard((states, keys, hypers), n)

  def sweep_step(states, keys_and_hypers):
    return jax.vmap(step)(states, *keys_and_hypers)

  t0 = time.perf_counter()
  states, histories = _fit(states, sweep_step, (keys, hypers), n_runs=n,
                           steps=kw["steps"], log_every=kw["log_every"],
                           callback=callback)
  wall = time.perf_counter() - t0

  results = []
  for i, run in enumerate(runs):
    comps = jax.tree.map(lambda a, i=i: a[i], states.components)
    comps = optim.renormalize(comps, kw["unit_norm_matrices"])
    run_settings = dataclasses.replace(
        settings, **{k: run.get(k, kw[k]) for k in HYPERS})
    d = api.Decomposition(tgt, run_settings, comps, {}, histories[i])
    finite = all(math.isfinite(v) for r in histories[i]
                 for k, v in r.items() if k not in ("step",))
    final = (api.evaluate(d, sample_fn, inits[i][2],
                          batch_size=kw["batch_size"],
                          n_batches=kw["eval_batches"]) if finite
             else {})
    final.update(steps=kw["steps"], wall_seconds=wall, finite=finite,
                 attribution_mode=settings.attribution_mode,
                 attribution_contract=settings.attribution_contract)
    results.append(dataclasses.replace(d, metrics=final))
  return SweepResult(runs, results, wall)


def _fit(states, sweep_step, keys_and_hypers, *, n_runs: int, steps: int,
         log_every: int, callback) -> tuple[Any, list[list[dict]]]:
  """`train.fit` for a runs axis: per-run histories; a non-finite run is
  reported and left to run on (it cannot disturb the others)."""
  run = train.make_runner(sweep_step)
  histories = [[] for _ in range(n_runs)]
  t0 = last = time.perf_counter()
  done, bad = 0, set()
  while done < steps:
    n = min(log_every, steps - done)
    states, metrics = run(states, keys_and_hypers, n)
    metrics = {k: np.asarray(v)[:n_runs] for k, v in
               jax.device_get(metrics).items()}
    done += n
    now = time.perf_counter()
    rate = n / max(now - last, 1e-9)
    last = now
    records = [dict(step=done, **{k: float(v[i]) for k, v in metrics.items()},
                    steps_per_s=rate, elapsed_s=now - t0)
               for i in range(n_runs)]
    for i, r in enumerate(records):
      histories[i].append(r)
      if i not in bad and not math.isfinite(r["loss"]):
        bad.add(i)
        logging.warning("run %d: non-finite loss in steps %d..%d", i,
                        done - n + 1, done)
    loss = metrics["loss"]
    logging.info(
        "step %d/%d  %d runs  loss min %.4g  median %.4g  max %.4g  "
        "L0 median %.2f  %.1f steps/s (%.0f run-steps/s)%s  ETA %.0fs",
        done, steps, n_runs, np.nanmin(loss), np.nanmedian(loss),
        np.nanmax(loss), np.nanmedian(metrics["l0"]), rate, rate * n_runs,
        " (incl. compile)" if done == n else "", (steps - done) / rate)
    if callback is not None:
      callback(done, records)
  return states, histories
