"""The target network as APD sees it: a batched apply function over a pytree.

`apply_fn(params, x_batch)` returns `y_batch`, or `(y_batch, acts)` with
`has_aux=True`, where `acts` is a dict of named hidden activations `[B, ...]`.
Those activations serve the hidden-activation reconstruction loss, and an entry
named like a decomposed leaf (its keystr) is taken as that leaf's input `a`
(the leaf used as `a @ W`) for activation attributions.

`Target.forward` runs one example with the decomposed leaves replaced, which is
what the attribution and masking code vmaps over.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Callable
from typing import Mapping

import jax
import jax.extend

from apd_jax.core import selection

Array = jax.Array
ApplyFn = Callable[[Any, Array], Any]
SampleFn = Callable[[Array, int], Array]


@dataclasses.dataclass(frozen=True, eq=False)
class Target:
  """A target model with its decomposed leaves named (hashed by identity)."""
  apply_fn: ApplyFn
  params: Any
  names: tuple[str, ...]
  has_aux: bool = False

  @property
  def weights(self) -> dict[str, Array]:
    """The target's decomposed leaves θ*."""
    return selection.get_leaves(self.params, self.names)

  def batch(self, x: Array, weights: Mapping[str, Array] | None = None
            ) -> tuple[Array, dict[str, Array]]:
    """`(y, acts)` on a batch, with the target's or the given weights."""
    params = self.params
    if weights is not None:
      params = selection.replace_leaves(params, weights)
    out = self.apply_fn(params, x)
    return out if self.has_aux else (out, {})

  def forward(self, weights: Mapping[str, Array], x: Array
              ) -> tuple[Array, dict[str, Array]]:
    """`(y, acts)` for ONE example `x` with the decomposed leaves = weights."""
    y, acts = self.batch(x[None], weights)
    return y[0], {k: a[0] for k, a in acts.items()}

  def output(self, weights: Mapping[str, Array], x: Array) -> Array:
    """`y` for one example (no activations)."""
    return self.forward(weights, x)[0]


def check(target: Target, sample_fn: SampleFn, batch_size: int
          ) -> tuple[jax.ShapeDtypeStruct, Any]:
  """Abstractly evaluates `sample_fn` then `apply_fn`; returns their shapes.

  Raises:
    ValueError: naming the function that failed and its error.
  """
  key = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)
  try:
    x = jax.eval_shape(lambda k: sample_fn(k, batch_size), key)
  except Exception as e:  # noqa: BLE001 - re-raised with context
    raise ValueError(
        f"sample_fn(key, {batch_size}) failed: {type(e).__name__}: {e}"
    ) from e
  if not hasattr(x, "shape") or not x.shape or x.shape[0] != batch_size:
    raise ValueError(
        f"sample_fn(key, {batch_size}) must return one array with leading "
        f"axis {batch_size}, got {x}")
  try:
    out = jax.eval_shape(target.apply_fn, target.params, x)
  except Exception as e:  # noqa: BLE001 - re-raised with context
    raise ValueError(
        f"apply_fn(params, x) failed on the output of sample_fn (x: "
        f"{x.shape} {x.dtype}){_linen_hint(target)}: {type(e).__name__}: "
        f"{e}") from e
  if target.has_aux:
    if not (isinstance(out, tuple) and len(out) == 2
            and isinstance(out[1], dict)):
      raise ValueError("has_aux=True: apply_fn must return (y, acts_dict)")
    y = out[0]
  else:
    y = out
  if not hasattr(y, "shape") or not y.shape or y.shape[0] != batch_size:
    raise ValueError(
        f"apply_fn must return one array with leading batch axis "
        f"{batch_size}, got {y}")
  return x, out


def _linen_hint(target: Target) -> str:
  """For a Flax linen `module.apply` given `variables['params']`: says so."""
  module = getattr(target.apply_fn, "__self__", None)
  if module is None or not type(module).__module__.startswith("flax.linen"):
    return ""
  top = sorted(target.params) if isinstance(target.params, Mapping) else []
  if "params" in top:
    return ""
  return (f"; the params tree's top-level keys are {top}: a linen "
          f"`module.apply` takes the whole `variables` dict "
          f"({{'params': ...}}), not variables['params']")


def check_sampler(sample_fn: SampleFn, batch_size: int) -> None:
  """Raises `ValueError` if `sample_fn`'s batch does not depend on its key:
  a numpy sampler would be traced once into the compiled step and give the
  same batch at every step."""
  key = jax.random.PRNGKey(0)
  try:
    closed = jax.make_jaxpr(lambda k: sample_fn(k, batch_size))(key)
  except Exception:  # noqa: BLE001 - `check` names sample_fn's error
    return
  jaxpr = closed.jaxpr
  live = set(jaxpr.invars)
  for eqn in jaxpr.eqns:
    if any(not isinstance(v, jax.extend.core.Literal) and v in live
           for v in eqn.invars):
      live.update(eqn.outvars)
  if not any(v in live for v in jaxpr.outvars
             if not isinstance(v, jax.extend.core.Literal)):
    raise ValueError(
        "sample_fn(key, batch_size) returns the same batch whatever the key "
        "(written with numpy or a fixed array?): it is traced once into the "
        "compiled step, so training would see one batch. Draw with "
        "jax.random from the key.")
