"""The training loop every target's own training shares.

    params, losses = fit(loss, params, optax.adam(1e-3), draw, key,
                         steps=1000, batch_size=64)

Step `i` (counted from 0) draws `x = draw(fold_in(key, i), batch_size)`
and applies the optimiser's update of `grad loss(params, x)`. Without
`log_every` the whole run is one compiled `lax.scan`; with it, chunks of
`log_every` steps (each a compiled `lax.scan`, the same step indices), and
`on_log(steps_done, params, mean loss of the chunk)` after each: progress
lines, held-out evaluations. A non-finite loss raises `FloatingPointError`.
"""

from __future__ import annotations

from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
OnLog = Callable[[int, Any, float], None]


def _step(loss, optimizer, draw, key, batch_size):
  """One optimiser step on the batch of step `i`: `(p, s), loss(p, x)`."""

  def step(carry, i):
    p, s = carry
    x = draw(jax.random.fold_in(key, i), batch_size)
    value, g = jax.value_and_grad(loss)(p, x)
    updates, s = optimizer.update(g, s, p)
    return (optax.apply_updates(p, updates), s), value

  return step


def _check_finite(values: Array, start: int) -> None:
  """Raises naming the first step (counted from 1) whose loss is not
  finite; `values[j]` is the loss of step `start + j + 1`."""
  bad = np.flatnonzero(~np.isfinite(np.asarray(values)))
  if bad.size:
    raise FloatingPointError(
        f"non-finite training loss at step {start + int(bad[0]) + 1}")


def fit(loss: Callable[[Any, Array], Array], params: Any,
        optimizer: optax.GradientTransformation,
        draw: Callable[[Array, int], Array], key: Array, *, steps: int,
        batch_size: int, log_every: int | None = None,
        on_log: OnLog | None = None) -> tuple[Any, Array]:
  """Minimises `loss(params, x)` on batches `x = draw(fold_in(key, i), B)`,
  `i = 0 .. steps - 1`.

  Args:
    log_every: steps per compiled chunk (the last may be shorter); None
      runs all `steps` in one `lax.scan`.
    on_log: called as `on_log(steps_done, params, mean_loss)` after each
      chunk (with `log_every` only).

  Returns:
    `(params, losses [steps])`.
  """
  step = _step(loss, optimizer, draw, key, batch_size)
  if log_every is None:

    @jax.jit
    def run(params):
      (p, _), values = jax.lax.scan(step, (params, optimizer.init(params)),
                                    jnp.arange(steps))
      return p, values

    params, values = run(params)
    _check_finite(values, 0)
    return params, values

  if log_every < 1:
    raise ValueError(f"log_every={log_every} is not positive")

  @jax.jit
  def chunk(p, s, indices):
    (p, s), values = jax.lax.scan(step, (p, s), indices)
    return p, s, values, jnp.mean(values)

  state, chunks = optimizer.init(params), []
  for start in range(0, steps, log_every):
    done = min(start + log_every, steps)
    params, state, values, mean = chunk(params, state,
                                        jnp.arange(start, done))
    _check_finite(values, start)
    chunks.append(values)
    if on_log is not None:
      on_log(done, params, float(mean))
  return params, jnp.concatenate(chunks) if chunks else jnp.zeros((0,))
