"""The training loop the trained targets share: one compiled `lax.scan`."""

from __future__ import annotations

from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def fit(loss: Callable[[Any, Array], Array], params: Any,
        optimizer: optax.GradientTransformation,
        draw: Callable[[Array, int], Array], key: Array, *, steps: int,
        batch_size: int) -> tuple[Any, Array]:
  """Minimises `loss(params, x)` on batches `x = draw(fold_in(key, i), B)`.

  Returns:
    `(params, losses [steps])`.
  """

  @jax.jit
  def run(params):
    def step(carry, i):
      p, s = carry
      x = draw(jax.random.fold_in(key, i), batch_size)
      value, g = jax.value_and_grad(loss)(p, x)
      updates, s = optimizer.update(g, s, p)
      return (optax.apply_updates(p, updates), s), value
    (p, _), values = jax.lax.scan(step, (params, optimizer.init(params)),
                                  jnp.arange(steps))
    return p, values

  return run(params)
