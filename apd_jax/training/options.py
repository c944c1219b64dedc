"""`Training`: how a decomposition is trained (the method says what).

    training = Training(steps=20_000, batch_size=2048, lr=3e-2,
                        warmup_frac=0.05, seed=0)

A frozen record, checked on construction; `decompose` and
`decompose_sweep` read it, and so can a loop of your own.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from apd_jax.methods.base import check_choice
from apd_jax.methods.base import check_positive
from apd_jax.training import optim


@dataclasses.dataclass(frozen=True)
class Training:
  """How to train (defaults in brackets; the paper's TMS 5-2 value after
  "paper").

  Attributes:
    steps: optimiser steps [10_000]. Paper: 20k (TMS), 40k (residual MLP 1),
      10k (residual MLP 2, 3), 200k (gated functions).
    batch_size: examples per step [2048]. Paper: 2048 (10k for the gated
      functions).
    lr: peak learning rate [1e-3]. Paper: 3e-2 (TMS 5-2), 1e-3 (40-10,
      residual MLPs), 3e-3 (gated).
    lr_schedule: ['constant'], 'cosine' (a quarter wave to
      `lr_final_frac · lr` at the last step; the SPD reference's) or
      'half_cosine' (a half wave, the VPD authors').
    lr_final_frac: where the cosine ends, as a fraction of `lr` [0.0]
      (VPD's recipe: 0.1).
    warmup_frac: linear warm-up from 0 over this fraction of the steps, in
      [0, 1); None [default]: the method's `WARMUP_FRAC` (APD 0.05, chosen
      from seeds: README "Defaults"; SPD 0, its paper's). APD paper: 0.05
      (TMS), 0.01 (residual MLPs).
    seed: seeds the initial parameters, the data and the evaluation [0].
    optimizer: an optax factory called as `optimizer(learning_rate)`, e.g.
      `optax.adamw`; None [default]: `optax.adam` (the paper's).
    eval_batches: fresh batches for the final metrics [10].
    log_every: steps between history records (the loss curves), callbacks
      and TensorBoard scalars [100]; also the steps compiled into one
      program.
    print_every: steps between progress lines (at the first and the last
      log too; at most one per log) [1000].
    progress: [True] progress lines (step, losses, steps/s, ETA) and a line
      naming the decomposed leaves; False: quiet.
    callback: called as `callback(step, record)` at every log (a sweep:
      `callback(step, records)`, one record per run) [None].
    mesh: the devices, with axes 'data' (the batch is split over it) and
      'component' (C is split over it); None [default]: every device on
      'data' (`sharding.make_mesh`).
    checkpoint_dir: if set, checkpoints go there and a run started again
      resumes from the latest one [None].
    checkpoint_every: steps between checkpoints, a multiple of `log_every`;
      0 [default]: only at the end and on SIGTERM.
    keep_checkpoints: the newest checkpoints kept [3].
    cpu_tweaks: [True] when the run starts, lower JAX's threefry PRNG on
      CPU unrolled, as on the other platforms (`training.cpu`: the same
      bits, drawn several times faster); False leaves JAX as it is.
      Importing apd_jax changes nothing in JAX.
    compute_dtype: the least precision of the target's floating params in
      the decomposition's passes ['float32']: a leaf narrower (bfloat16,
      float16) is cast up to it before anything is traced, so that
      rounding puts no floor under the reconstruction losses (about 1e-6
      in bfloat16 on the toy targets); None: every leaf in its own dtype.
      Either way the trained parameters (components, causal-importance
      functions) and the optimiser state are float32, and every loss and
      metric is computed in float32 (docs: "Dtypes").
  """
  steps: int = 10_000
  batch_size: int = 2048
  lr: float = 1e-3
  lr_schedule: str = "constant"
  lr_final_frac: float = 0.0
  warmup_frac: float | None = None
  seed: int = 0
  optimizer: Callable[[Any], optax.GradientTransformation] | None = None
  eval_batches: int = 10
  log_every: int = 100
  print_every: int = 1000
  progress: bool = True
  callback: Callable[..., None] | None = None
  mesh: jax.sharding.Mesh | None = None
  checkpoint_dir: str | None = None
  checkpoint_every: int = 0
  keep_checkpoints: int = 3
  cpu_tweaks: bool = True
  compute_dtype: str | None = "float32"

  # The options a sweep may vary between its runs.
  SWEEPABLE = ("seed", "lr")

  def __post_init__(self):
    check_positive(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                   eval_batches=self.eval_batches, log_every=self.log_every,
                   print_every=self.print_every,
                   keep_checkpoints=self.keep_checkpoints)
    check_choice("lr_schedule", self.lr_schedule, optim.SCHEDULES)
    if not 0 <= self.lr_final_frac <= 1:
      raise ValueError(f"lr_final_frac must be in [0, 1], got "
                       f"{self.lr_final_frac}")
    if self.warmup_frac is not None and not 0 <= self.warmup_frac < 1:
      raise ValueError(f"warmup_frac must be in [0, 1), got "
                       f"{self.warmup_frac}")
    if self.compute_dtype is not None:
      object.__setattr__(self, "compute_dtype",
                         _floating_name(self.compute_dtype))
    if self.checkpoint_every < 0 or self.checkpoint_every % self.log_every:
      raise ValueError(f"checkpoint_every must be a non-negative multiple "
                       f"of log_every={self.log_every}, got "
                       f"{self.checkpoint_every}")

  def replace(self, **values) -> Training:
    """A copy with `values` changed (checked again)."""
    return dataclasses.replace(self, **values)

  def make_optimizer(self, before: optax.GradientTransformation | None = None,
                     default_warmup: float = 0.0
                     ) -> optax.GradientTransformation:
    """The optimiser on the learning-rate schedule, after `before` (a
    method's gradient transform) if given; `default_warmup` stands for a
    `warmup_frac` of None."""
    warmup = default_warmup if self.warmup_frac is None else self.warmup_frac
    rate = optim.schedule(self.lr, self.steps, warmup_frac=warmup,
                          kind=self.lr_schedule,
                          final_frac=self.lr_final_frac)
    opt = (self.optimizer or optax.adam)(rate)
    return opt if before is None else optax.chain(before, opt)


def _floating_name(dtype: Any) -> str:
  """The name of the floating dtype `dtype` ('bfloat16', jnp.float32, ...)."""
  try:
    d = jnp.dtype(dtype)
  except TypeError:
    d = None
  if d is None or not jnp.issubdtype(d, jnp.floating):
    raise ValueError(f"compute_dtype must be a floating dtype such as "
                     f"'float32', or None, got {dtype!r}")
  return d.name
