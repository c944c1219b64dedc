"""The learning-rate schedule: linear warm-up, then constant or a cosine.

`Training.make_optimizer` puts the optimiser (Adam by default) on it.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "half_cosine")


def schedule(lr: float, steps: int, *, warmup_frac: float = 0.0,
             kind: str = "constant", final_frac: float = 0.0
             ) -> optax.Schedule:
  """Linear warm-up from 0 over `w = warmup_frac·steps`, then constant or
  a cosine decay to `final_frac · lr` at the last step.

  'cosine' is the SPD reference's quarter wave, 'half_cosine' the VPD
  authors' half wave, with `u = (t − w) / (steps − w − 1)`:

  .. math::  lr(t) = lr · (f + (1 - f) \\cos(\\tfrac{π}{2} u)), \\qquad
             lr(t) = lr · (f + (1 - f) \\tfrac{1 + \\cos(π u)}{2}).

  The quarter wave keeps the rate higher for longer.
  """
  if kind not in SCHEDULES:
    raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {kind!r}")
  warmup = int(warmup_frac * steps)
  if kind in ("cosine", "half_cosine"):
    span = max(steps - warmup - 1, 1)
    def main(t):
      u = jnp.minimum(t / span, 1.0)
      wave = (jnp.cos(0.5 * jnp.pi * u) if kind == "cosine"
              else 0.5 * (1.0 + jnp.cos(jnp.pi * u)))
      return lr * (final_frac + (1.0 - final_frac) * wave)
  else:
    main = optax.constant_schedule(lr)
  if warmup == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], [warmup])
