"""What the engine asks of a decomposition method, and the checks they share.

A method is a frozen, hashable object of the user's choices (`apd.APD`,
`spd.SPD`) that
the engine (`engine/`) drives without knowing which method it is:

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

`hypers` is a pytree whose leaves a sweep stacks over its runs; the step
passes it to `loss`, so runs that differ only in these values share one
compiled program. `progress` is the traced fraction of training done
(`step / steps`), for schedules inside the loss.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol
from typing import Sequence


class Method(Protocol):
  """The protocol above (see `apd.APD` for the reference implementation)."""
  SWEEPABLE: tuple[str, ...]
  WARMUP_FRAC: float

  def check(self, target, sample_fn, batch_size: int) -> None: ...
  def init_params(self, key, target, sample_fn=None) -> Any: ...
  def project(self, params) -> Any: ...
  def plan(self, target, sample_fn, batch_size: int, params) -> Any: ...
  def loss(self, params, x, target, plan, key=None, hypers=None,
           progress=None): ...
  def hypers(self, **values) -> Any: ...
  def evaluate(self, result, sample_fn, key, *, batch_size: int,
               n_batches: int) -> dict: ...


def check_positive(**values) -> None:
  """Raises `ValueError` naming the first value that is not > 0."""
  for name, v in values.items():
    if v is None or not v > 0:
      raise ValueError(f"{name} must be positive, got {v!r}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {tuple(choices)}, got "
                     f"{value!r}")
