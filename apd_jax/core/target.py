"""The target network as APD sees it: a batched apply function over a pytree.

`apply_fn(params, x_batch)` returns `y_batch`, or `(y_batch, acts)` with
`has_aux=True`, where `acts` is a dict of named hidden activations `[B, ...]`.
Those activations serve the hidden-activation reconstruction loss, and an entry
named like a decomposed leaf (its keystr) is taken as that leaf's input `a`
(the leaf used as `a @ W`) for activation attributions.

`Target.forward` runs one example with the decomposed leaves replaced, which is
what the attribution and masking code vmaps over.

A leaf with more than 2 axes (an attention kernel `[d_model, heads, d_head]`,
or `[heads, d_head, d_model]`, as Flax's `DenseGeneral` stores them) is
decomposed as the matrix it is: its leading axes, those the model's product
contracts with the activation, are the rows and the rest the columns
(`[d_model, heads·d_head]`, `[heads·d_head, d_model]`). `matrix_axes` finds
that split from the model's `dot_general`; `Target.weights` are the 2-D
views, and `Target.batch` reshapes weights back before calling `apply_fn`.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Callable
from typing import Mapping

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

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
  # Per name, how many leading axes are the matrix's rows (None: 1 each).
  row_axes: tuple[int, ...] | None = None

  def __post_init__(self):
    rows = self.row_axes or (1,) * len(self.names)
    if len(rows) != len(self.names):
      raise ValueError(f"row_axes {rows} must give one count per leaf "
                       f"{self.names}")
    for n, k in zip(self.names, rows, strict=True):
      shape = self.shapes[n]
      if not 1 <= k < len(shape) or (len(shape) > 2 and self.row_axes is None):
        raise ValueError(f"leaf {n} of shape {shape} needs row_axes in "
                         f"[1, {len(shape) - 1}] (see matrix_axes)")

  @property
  def shapes(self) -> dict[str, tuple[int, ...]]:
    """The decomposed leaves' own shapes."""
    return {n: tuple(np.shape(w)) for n, w in
            selection.get_leaves(self.params, self.names).items()}

  @property
  def weights(self) -> dict[str, Array]:
    """The target's decomposed leaves θ*, as matrices `[rows, columns]`."""
    rows = self.row_axes or (1,) * len(self.names)
    leaves = selection.get_leaves(self.params, self.names)
    return {n: jnp.reshape(leaves[n], (int(np.prod(np.shape(leaves[n])[:k])),
                                       -1))
            for n, k in zip(self.names, rows, strict=True)}

  def batch(self, x: Array, weights: Mapping[str, Array] | None = None
            ) -> tuple[Array, dict[str, Array]]:
    """`(y, acts)` on a batch, with the target's or the given weights."""
    params = self.params
    if weights is not None:
      shapes = self.shapes
      params = selection.replace_leaves(params, {
          n: jnp.reshape(w, shapes[n]) if jnp.ndim(w) != len(shapes[n])
          else w for n, w in weights.items()})
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


def check_finite(params: Any) -> None:
  """Raises `ValueError` naming every floating leaf of `params` (its keystr
  path) that holds NaN or inf, with how many of each."""
  bad = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    leaf = np.asarray(leaf) if isinstance(leaf, float) else leaf
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
      continue
    nan, inf = _non_finite(leaf)
    if nan or inf:
      bad.append(f"{jax.tree_util.keystr(path)} {tuple(np.shape(leaf))}: "
                 f"{nan} nan, {inf} inf of {int(np.size(leaf))}")
  if bad:
    raise ValueError(f"the target's params hold non-finite values (every "
                     f"loss would be nan): {'; '.join(bad)}")


def _non_finite(leaf: Any) -> tuple[int, int]:
  """`(NaN count, inf count)` of an array, on the host (the shards this
  process holds, for an array spread over processes)."""
  shards = ([s.data for s in leaf.addressable_shards]
            if not getattr(leaf, "is_fully_addressable", True) else [leaf])
  nan = inf = 0
  for s in shards:
    a = np.asarray(s)
    if not np.issubdtype(a.dtype, np.inexact):   # bfloat16 and the like
      a = a.astype(np.float32)
    nan += int(np.isnan(a).sum())
    inf += int(np.isinf(a).sum())
  return nan, inf


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


def matrix_axes(apply_fn: ApplyFn, params: Any, names: tuple[str, ...],
                x: Any) -> tuple[int, ...]:
  """Per leaf, the number of its leading axes that the model's products
  contract with an activation (1 for a matrix): from the `dot_general`s of
  `apply_fn(params, x)` (`x` may be abstract).

  Raises:
    ValueError: for a leaf of more than 2 axes that no product contracts
      on leading axes, or that two products contract differently.
  """
  leaves = selection.get_leaves(params, names)
  deep = sorted(n for n in names if np.ndim(leaves[n]) > 2)
  if not deep:
    return (1,) * len(names)
  f = lambda ws, x: apply_fn(selection.replace_leaves(params, ws), x)  # noqa: E731
  closed = jax.make_jaxpr(f)({n: leaves[n] for n in deep}, x)
  watched = dict(zip(closed.jaxpr.invars[:len(deep)], deep, strict=True))
  found = {n: set() for n in deep}
  _contractions(closed.jaxpr, watched, found)
  out = []
  for n in names:
    if n not in found:
      out.append(1)
      continue
    dims = found[n]
    if len(dims) != 1 or next(iter(dims)) != tuple(range(len(next(iter(
        dims))))):
      raise ValueError(
          f"leaf {n} of shape {np.shape(leaves[n])} is contracted on axes "
          f"{sorted(dims) or 'nowhere'}; a leaf of more than 2 axes is "
          f"decomposed only where every product contracts the same leading "
          f"axes (store it as a matrix otherwise)")
    out.append(len(next(iter(dims))))
  return tuple(out)


_PASS = ("convert_element_type", "copy", "copy_p")
_SUBJAXPRS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _contractions(jaxpr, watched: dict, found: dict) -> None:
  """Adds to `found[name]` the weight-side contracting dims of every
  `dot_general` on a watched variable (through copies and calls)."""
  lit = jax.extend.core.Literal
  for eqn in jaxpr.eqns:
    ins = [None if isinstance(v, lit) else v for v in eqn.invars]
    if eqn.primitive.name == "dot_general":
      (lc, rc), _ = eqn.params["dimension_numbers"]
      for v, dims in zip(ins, (lc, rc), strict=True):
        if v in watched:
          found[watched[v]].add(tuple(dims))
      continue
    if eqn.primitive.name in _PASS and ins[0] in watched:
      watched[eqn.outvars[0]] = watched[ins[0]]
      continue
    sub = next((eqn.params[p] for p in _SUBJAXPRS if p in eqn.params), None)
    if sub is not None:
      sub = getattr(sub, "jaxpr", sub)
      inner = {iv: watched[v] for v, iv in zip(ins, sub.invars, strict=False)
               if v in watched}
      if inner:
        _contractions(sub, inner, found)
