"""The optimizer: Adam with warm-up and a constant or cosine schedule.

With `unit_norm_matrices`, a transform placed before Adam removes from each
`U[l][c, :, m]` gradient its part parallel to that (unit) column,

.. math::  g ← g − (g·u) u,

so the update keeps `U`'s columns on the unit sphere to first order; the
train step renormalises them before each forward pass.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from apd_jax import components as comp_lib

SCHEDULES = ("constant", "cosine")


def schedule(lr: float, steps: int, *, warmup_frac: float = 0.0,
             kind: str = "constant") -> optax.Schedule:
  """Linear warm-up from 0 over `w = warmup_frac·steps`, then constant or
  cosine decay to 0 at the last step.

  The cosine is the reference's quarter wave,

  .. math::  lr(t) = lr · \\cos(\\tfrac{π}{2} · \\tfrac{t - w}{steps - w - 1}),

  which keeps the rate higher for longer than a half-wave cosine.
  """
  if kind not in SCHEDULES:
    raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {kind!r}")
  warmup = int(warmup_frac * steps)
  if kind == "cosine":
    span = max(steps - warmup - 1, 1)
    def main(t):
      return lr * jnp.cos(0.5 * jnp.pi * jnp.minimum(t / span, 1.0))
  else:
    main = optax.constant_schedule(lr)
  if warmup == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], [warmup])


class ProjectState(NamedTuple):
  """No state."""


def project_out_parallel() -> optax.GradientTransformation:
  """Removes from the `U` gradients their part parallel to `U`'s columns."""

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("project_out_parallel needs params")

    def proj(g, u):
      u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
      return g - jnp.sum(g * u, axis=1, keepdims=True) * u

    U = jax.tree.map(proj, updates.U, params.U)
    return updates.replace(U=U), state

  return optax.GradientTransformation(lambda _: ProjectState(), update)


def make_optimizer(lr: float, steps: int, *, warmup_frac: float = 0.0,
                   lr_schedule: str = "constant",
                   unit_norm_matrices: bool = False
                   ) -> optax.GradientTransformation:
  """Adam (no weight decay, no clipping) on `Components`, as the reference."""
  adam = optax.adam(schedule(lr, steps, warmup_frac=warmup_frac,
                             kind=lr_schedule))
  if unit_norm_matrices:
    return optax.chain(project_out_parallel(), adam)
  return adam


def renormalize(comps: comp_lib.Components, unit_norm: bool
                ) -> comp_lib.Components:
  """`comps` with unit-norm `U` columns when `unit_norm`, else unchanged."""
  return comp_lib.normalize_u(comps) if unit_norm else comps
