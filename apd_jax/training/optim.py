"""The learning-rate schedule: linear warm-up, then constant or cosine.

`Training.make_optimizer` puts the optimiser (Adam by default) on it.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine")


def schedule(lr: float, steps: int, *, warmup_frac: float = 0.0,
             kind: str = "constant", final_frac: float = 0.0
             ) -> optax.Schedule:
  """Linear warm-up from 0 over `w = warmup_frac·steps`, then constant or
  cosine decay to `final_frac · lr` at the last step.

  The cosine is the reference's quarter wave,

  .. math::  lr(t) = lr · (f + (1 - f) \\cos(\\tfrac{π}{2} ·
             \\tfrac{t - w}{steps - w - 1})),

  which keeps the rate higher for longer than a half-wave cosine.
  """
  if kind not in SCHEDULES:
    raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {kind!r}")
  warmup = int(warmup_frac * steps)
  if kind == "cosine":
    span = max(steps - warmup - 1, 1)
    def main(t):
      wave = jnp.cos(0.5 * jnp.pi * jnp.minimum(t / span, 1.0))
      return lr * (final_frac + (1.0 - final_frac) * wave)
  else:
    main = optax.constant_schedule(lr)
  if warmup == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], [warmup])
