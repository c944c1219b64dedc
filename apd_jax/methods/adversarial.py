"""Adversarial sources: persistent PGD for training, sign-PGD for evaluation.

VPD trains its masks against sources chosen to hurt reconstruction. Each
decomposed matrix has sources `r ∈ [0, 1]^{C+1}` (its C components and its
Δ channel, `routing.masks_from_sources`), and a loss `L(r)` (the
reconstruction under the masks they give). An ascent step is

.. math::  r ← \\mathrm{clip}(r + η_t \\, \\mathrm{adam}(∇_r L), 0, 1)

with Adam's moments (β1 0.5, β2 0.99, ε 1e-8 after the square root, bias
corrected) kept in the state. The sources are *persistent*: they and their
moments live in the training state and carry over from one training step
to the next, so a few ascent steps per training step keep them near the
worst case. One training step makes `n_warmup` ascents (`ascend`), with
the decomposition held fixed, then one more from the source gradient of the
main loss's own backward pass (`apply_ascent`).

The sources' leading shape is their scope (`scope_shape`): shared by every
example (`[C+1]`, or `[T, C+1]` per position) or one set per example
(`[B, C+1]`, `[B, T, C+1]`); `expand` broadcasts them to a batch. A
shared source's gradient is the sum of its broadcast copies' gradients.

Evaluation uses fresh, non-persistent sign-PGD (`sign_pgd`).
"""

from __future__ import annotations

from typing import Any
from typing import Callable
from typing import Mapping
from typing import NamedTuple
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Sources = Any                 # a pytree of arrays [..., C+1] in [0, 1]
LossOfSources = Callable[[Sources], Array]
SCOPES = ("shared", "per_example")


class Settings(NamedTuple):
  """The ascent's options (VPD's language-model recipe as defaults)."""
  lr: float = 0.01            # η after warm-up
  b1: float = 0.5             # Adam's first-moment decay
  b2: float = 0.99            # Adam's second-moment decay
  eps: float = 1e-8           # added to √v̂
  warmup_frac: float = 0.025  # fraction of training over which η rises


DEFAULTS = Settings()


class SourceState(NamedTuple):
  """Persistent sources and their optimiser's state."""
  sources: Sources            # name -> [*scope, C+1] in [0, 1]
  opt_state: optax.OptState   # Adam's count and moments, like `sources`


def optimizer(settings: Settings = DEFAULTS
              ) -> optax.GradientTransformation:
  """Adam's direction `m̂ / (√v̂ + ε)` (no learning rate, no sign: the
  ascent adds `η` times it)."""
  return optax.scale_by_adam(b1=settings.b1, b2=settings.b2,
                             eps=settings.eps)


def learning_rate(progress: float | Array, settings: Settings = DEFAULTS
                  ) -> Array:
  """`η(t) = lr · min(1, t / warmup_frac)` for the fraction `t` of training
  done; `lr` throughout if `warmup_frac` is 0. A function of the training
  step, not of the ascent count: every ascent of a step uses one `η`."""
  t = jnp.asarray(progress, jnp.float32)
  if settings.warmup_frac <= 0:
    return jnp.full_like(t, settings.lr)
  return settings.lr * jnp.clip(t / settings.warmup_frac, 0.0, 1.0)


def scope_shape(scope: str, batch_shape: Sequence[int],
                per_position: bool = True) -> tuple[int, ...]:
  """The sources' leading shape for a batch of shape `[B]` or `[B, T]`.

  `"shared"`: `()`, or `(T,)` per position; `"per_example"`: `(B,)`, or
  `(B, T)` per position (`(B, 1)` if not). `per_position` only matters
  when the batch has positions."""
  if scope not in SCOPES:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
  batch_shape = tuple(batch_shape)
  if not batch_shape:
    raise ValueError("batch_shape needs at least the batch axis")
  positions = batch_shape[1:] if per_position else (1,) * len(
      batch_shape[1:])
  if scope == "shared":
    return positions if per_position else ()
  return (batch_shape[0], *positions)


def init_sources(key: Array, n_components: Mapping[str, int],
                 lead_shape: Sequence[int] | Mapping[str, Sequence[int]] = ()
                 ) -> dict[str, Array]:
  """`{name: r ~ U[0, 1]^[*lead, C+1]}`, independent per matrix; `lead`
  is `lead_shape`, or `lead_shape[name]` where it maps names to shapes."""
  keys = jax.random.split(key, len(n_components))
  lead = (lead_shape if isinstance(lead_shape, Mapping)
          else dict.fromkeys(n_components, tuple(lead_shape)))
  return {name: jax.random.uniform(k, (*lead[name], c + 1))
          for k, (name, c) in zip(keys, n_components.items(), strict=True)}


def init(key: Array, n_components: Mapping[str, int],
         lead_shape: Sequence[int] | Mapping[str, Sequence[int]] = (),
         settings: Settings = DEFAULTS) -> SourceState:
  """Uniform sources (`init_sources`) and zero moments."""
  sources = init_sources(key, n_components, lead_shape)
  return SourceState(sources, optimizer(settings).init(sources))


def expand(sources: Sources, batch_shape: Sequence[int]) -> Sources:
  """Each source broadcast to `[*batch_shape, C+1]` (its leading shape must
  broadcast to `batch_shape`, as `scope_shape`'s do)."""
  return jax.tree.map(
      lambda r: jnp.broadcast_to(r, (*batch_shape, r.shape[-1])), sources)


def apply_ascent(state: SourceState, grads: Sources, *,
                 lr: float | Array | None = None,
                 settings: Settings = DEFAULTS) -> SourceState:
  """One ascent step from the gradient `grads = ∇_r L` (shaped like the
  sources): `r ← clip(r + η adam(grads), 0, 1)`, `η = lr` (default
  `settings.lr`).

  The gradient may come from any backward pass, e.g. the main loss's, in
  which the sources entered as leaves. Pass `∇_r L` of the adversarial term
  itself: a term weighted by `c` gives `c ∇_r L`, which Adam all but
  ignores (it is invariant to the gradient's scale up to `ε`).
  """
  lr = settings.lr if lr is None else lr
  direction, opt_state = optimizer(settings).update(grads, state.opt_state)
  sources = jax.tree.map(lambda r, d: jnp.clip(r + lr * d, 0.0, 1.0),
                         state.sources, direction)
  return SourceState(sources, opt_state)


def ascend(loss_of_sources: LossOfSources, state: SourceState,
           n_steps: int, *, lr: float | Array | None = None,
           settings: Settings = DEFAULTS) -> SourceState:
  """`n_steps` ascent steps on `loss_of_sources(sources)` (`apply_ascent`
  with `∇_r` of that loss), the moments carried from step to step.

  `loss_of_sources` should hold the decomposition fixed (stop-gradient on
  the components and importances it closes over). The result is
  stop-gradient: the new sources enter later losses as leaves.
  """
  grad = jax.grad(loss_of_sources)

  def body(_, s):
    return apply_ascent(s, grad(s.sources), lr=lr, settings=settings)

  state = jax.lax.fori_loop(0, n_steps, body, state)
  return jax.lax.stop_gradient(state)


def sign_pgd(loss_of_sources: LossOfSources, init: Sources,
             n_steps: int = 20, step: float = 0.1) -> Sources:
  """Fresh sign-PGD, for evaluation: from the sources `init`, `n_steps` of

  .. math::  r ← \\mathrm{clip}(r + α \\, \\mathrm{sign}(∇_r L), 0, 1)

  (`α = step`). Nothing persists; the result is stop-gradient. For the
  evaluation protocol, pass sources shared across the batch (`[C+1]` per
  matrix) and let `loss_of_sources` `expand` them.
  """
  grad = jax.grad(loss_of_sources)

  def body(_, r):
    g = grad(r)
    return jax.tree.map(
        lambda ri, gi: jnp.clip(ri + step * jnp.sign(gi), 0.0, 1.0), r, g)

  sources = jax.lax.fori_loop(0, n_steps, body, init)
  return jax.lax.stop_gradient(sources)
