"""What the engine asks of a decomposition method, and the checks they share.

A method is a frozen, hashable dataclass of the user's choices (`apd.APD`,
`spd.SPD`) that everything outside `methods/` drives without knowing which
method it is. Training:

  method.check(target, sample_fn, batch_size)   options vs the target
  method.init_params(key, target, sample_fn)    the trained parameters
  method.init_traceable                         init_params jittable?
  method.project(params)                        params as the loss sees them
  method.gradient_transform()                   optax transform or None
  method.plan(target, sample_fn, B, params)     how to compute fastest
  method.loss(params, x, target, plan, key, hypers, progress)
                                                -> (L, metrics)
  method.hypers(**values)                       traced numeric options
  method.SWEEPABLE, method.bound(runs), method.check_runs(runs, B)
  method.WARMUP_FRAC                            warm-up when Training's is None
  method.evaluate(result, sample_fn, key, batch_size=, n_batches=)

Optional, for a method with state beside its parameters (not trained by
the optimiser: e.g. persistent adversarial sources with their own
optimiser), kept in `TrainState.method_state`, checkpointed and swept with
the rest:

  method.init_state(key, target, params, sample_fn, batch_size)
                                                its state at step 0
  method.update(params, opt_state, method_state, x, target, plan, key,
                hypers, progress, optimizer)
                -> (params, opt_state, method_state, metrics)
                                                the step after the batch
                                                is drawn, its own

The loss's metrics may hold `l0` (mean active components per example): the
progress lines and sweep tables show it where present. Analysis, export and
the command line (a `Decomposition` delegates to these):

  method.NAME                 its name on the command line and on disk
  method.METRICS              final metrics a sweep tabulates
  method.SELECT               (metric, 'min' or 'max'): a sweep's best run
                              by default
  method.SCORE, SCORE_NAME    what a score is (short, long: 'G', 'causal
                              importance')
  method.ACTIVE               when a component counts as active, in words
  method.EXTRAS               names of its own analyses; `result.<name>(x)`
                              calls `method.<name>(result, x)`
  method.PARAMS, method.PLAN  its parameters' and plan's classes (save/load:
                              `PARAMS(**state_dict)`, `PLAN(**fields)`)
  method.CLI_DEFAULTS         the command line's values of its required
                              options
  method.groups(result)                 {group: leaves its components span}
  method.scores(result, x)              {group: [B, (T,) C_g]}
  method.active(result, x, batch=False) {group: bool [B, (T,) C_g]}
  method.masks(result, x, batch=False)  {group: the mask of its minimality
                                        pass}
  method.masked_apply(result, mask, x)  f(x) with {group: [B, (T,) C_g]}
                                        coefficients per component

`result` is the `Decomposition` (target, plan, trained params, final
metrics). `active` and `masks` are per example (each example's answer
independent of the rest of the batch) unless `batch=True` asks for what
training does with this batch (APD's batch top-k).

`params` hold the low-rank factors as `params.U`, `params.V` (leaf ->
`[C, i, m]`, `[C, m, o]`). `hypers` is a NamedTuple of traced scalars,
`lr_scale` among them (a sweep sets it from each run's lr), which a sweep
stacks over its runs; the step passes it to `loss`, so runs that differ only in
these values share one compiled program. `progress` is the traced fraction
of training done (`step / steps`), for schedules inside the loss.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol
from typing import Sequence


class Method(Protocol):
  """The protocol above (see `apd.APD` for the reference implementation)."""
  NAME: str
  SWEEPABLE: tuple[str, ...]
  WARMUP_FRAC: float
  METRICS: tuple[str, ...]
  SELECT: tuple[str, str]
  SCORE: str
  SCORE_NAME: str
  ACTIVE: str
  EXTRAS: tuple[str, ...]
  PARAMS: type
  PLAN: type | None
  CLI_DEFAULTS: dict

  def check(self, target, sample_fn, batch_size: int) -> None: ...
  def init_params(self, key, target, sample_fn=None) -> Any: ...
  def project(self, params) -> Any: ...
  def gradient_transform(self) -> Any: ...
  def plan(self, target, sample_fn, batch_size: int, params) -> Any: ...
  def loss(self, params, x, target, plan, key=None, hypers=None,
           progress=None): ...
  def hypers(self, **values) -> Any: ...
  def bound(self, runs) -> Any: ...
  def check_runs(self, runs, batch_size: int) -> None: ...
  def evaluate(self, result, sample_fn, key, *, batch_size: int,
               n_batches: int) -> dict: ...
  def groups(self, result) -> dict[str, tuple[str, ...]]: ...
  def scores(self, result, x) -> dict: ...
  def active(self, result, x, batch: bool = False) -> dict: ...
  def masks(self, result, x, batch: bool = False) -> dict: ...
  def masked_apply(self, result, mask, x) -> Any: ...


def check_positive(**values) -> None:
  """Raises `ValueError` naming the first value that is not > 0."""
  for name, v in values.items():
    if v is None or not v > 0:
      raise ValueError(f"{name} must be positive, got {v!r}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {tuple(choices)}, got "
                     f"{value!r}")
