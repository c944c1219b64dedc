"""The target network as APD sees it: a batched apply function over a pytree.

`apply_fn(params, x_batch)` returns `y_batch`, or `(y_batch, acts)` with
`has_aux=True`, where `acts` is a dict of named hidden activations `[B, ...]`.
Those activations serve the hidden-activation reconstruction loss, and an entry
named like a decomposed leaf (its keystr) is taken as that leaf's input `a`
(the leaf used as `a @ W`) for activation attributions.

`Target.forward` runs one example with the decomposed leaves replaced, which is
what the attribution and masking code vmaps over.

A leaf with more than 2 axes (an attention kernel `[d_model, heads, d_head]`,
`[heads, d_model, d_head]` or a fused `[2, heads, d_model, d_head]`, as Flax's
`DenseGeneral` and `Einsum` store them) is decomposed as the matrix it is:
the axes the model's products contract with an activation are its rows, in
the leaf's order, and the rest its columns (`[d_model, heads·d_head]`,
`[d_model, 2·heads·d_head]`). `matrix_axes` reads that split from the
model's `dot_general`s (`selection.View` follows the leaf through
reshapes and transposes); `Target.weights` are the matrices, and
`Target.batch` lays weights back out as the leaves before calling
`apply_fn`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from typing import Callable
from typing import Mapping
from typing import NamedTuple

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
  """A target model with its decomposed leaves named (hashed by identity).

  A pytree whose leaves are `params` (the rest is static): given to a
  jitted function, the target's weights are an argument of the program,
  not constants compiled into it (one copy in memory, shardable).
  """
  apply_fn: ApplyFn
  params: Any
  names: tuple[str, ...]
  has_aux: bool = False
  # Per name, its row axes: a count k of leading axes, or the tuple of
  # axes (None: 1 each; see `matrix_axes`).
  row_axes: tuple[int | tuple[int, ...], ...] | None = None

  def __post_init__(self):
    rows = self.row_axes or (1,) * len(self.names)
    if len(rows) != len(self.names):
      raise ValueError(f"row_axes {rows} must give one count per leaf "
                       f"{self.names}")
    if self.row_axes is not None:   # JSON gives lists
      object.__setattr__(self, "row_axes", tuple(
          k if isinstance(k, int) else tuple(k) for k in self.row_axes))
    for n, k in zip(self.names, rows, strict=True):
      shape = self.shapes[n]
      axes = range(k) if isinstance(k, int) else tuple(k)
      if (not 1 <= len(axes) < len(shape) or len(set(axes)) != len(axes)
          or not set(axes) <= set(range(len(shape)))
          or (len(shape) > 2 and self.row_axes is None)):
        raise ValueError(f"leaf {n} of shape {shape} needs row_axes: a count "
                         f"in [1, {len(shape) - 1}] or a tuple of some of its "
                         f"axes (see matrix_axes)")

  @property
  def shapes(self) -> dict[str, tuple[int, ...]]:
    """The decomposed leaves' own shapes."""
    return {n: tuple(np.shape(w)) for n, w in
            selection.get_leaves(self.params, self.names).items()}

  @property
  def layouts(self) -> dict[str, tuple[tuple[int, ...], int]]:
    """Per leaf, `(order, k)`: its axes in the matrix's order (the `k` row
    axes first, then the rest, each in the leaf's order)."""
    rows = self.row_axes or (1,) * len(self.names)
    out = {}
    for n, k in zip(self.names, rows, strict=True):
      k = tuple(range(k)) if isinstance(k, int) else tuple(k)
      rest = tuple(a for a in range(len(self.shapes[n])) if a not in k)
      out[n] = (k + rest, len(k))
    return out

  @property
  def weights(self) -> dict[str, Array]:
    """The target's decomposed leaves θ*, as matrices `[rows, columns]`:
    `W = reshape(transpose(leaf, order), (Π rows, Π columns))`."""
    leaves = selection.get_leaves(self.params, self.names)
    out = {}
    for n, (order, k) in self.layouts.items():
      w = leaves[n]
      if order != tuple(range(len(order))):
        w = jnp.transpose(w, order)
      out[n] = jnp.reshape(w, (math.prod(np.shape(w)[:k]), -1))
    return out

  def as_leaves(self, weights: Mapping[str, Array]) -> dict[str, Array]:
    """Matrices `[..., rows, columns]` (the target's weights, a component's
    `P_c`, all of `[C, i, o]`) laid out as their leaves `[..., *leaf]`: the
    inverse of `weights`."""
    shapes, layouts = self.shapes, self.layouts
    out = {}
    for n, w in weights.items():
      order, _ = layouts[n]
      lead = jnp.shape(w)[:-2]
      w = jnp.reshape(w, lead + tuple(shapes[n][a] for a in order))
      if order != tuple(range(len(order))):
        back = np.argsort(order)
        w = jnp.transpose(w, tuple(range(len(lead)))
                          + tuple(len(lead) + int(a) for a in back))
      out[n] = w
    return out

  def batch(self, x: Array, weights: Mapping[str, Array] | None = None
            ) -> tuple[Array, dict[str, Array]]:
    """`(y, acts)` on a batch, with the target's or the given weights
    (matrices, or already laid out as the leaves)."""
    params = self.params
    if weights is not None:
      shapes = self.shapes
      params = selection.replace_leaves(params, {
          **{n: w for n, w in weights.items()
             if jnp.ndim(w) == len(shapes[n])},
          **self.as_leaves({n: w for n, w in weights.items()
                            if jnp.ndim(w) != len(shapes[n])})})
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


_STATIC = ("apply_fn", "names", "has_aux", "row_axes")


def _flatten(target: Target):
  return (target.params,), tuple(getattr(target, f) for f in _STATIC)


def _unflatten(static: tuple, children: tuple) -> Target:
  target = object.__new__(Target)   # no checks: leaves may be tracers
  for name, value in zip(("params",) + _STATIC, children + static,
                         strict=True):
    object.__setattr__(target, name, value)
  return target


jax.tree_util.register_pytree_node(Target, _flatten, _unflatten)


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


def upcast(tree: Any, dtype: Any) -> Any:
  """`tree` with each floating leaf narrower than `dtype` cast up to it
  (to `jnp.promote_types(leaf, dtype)`): bfloat16 and float16 leaves
  become float32 for `dtype=float32`, a float64 leaf stays float64; other
  leaves, and every leaf for `dtype=None`, are kept as they are."""
  if dtype is None:
    return tree

  def cast(leaf):
    have = getattr(leaf, "dtype", None)
    if have is None or not jnp.issubdtype(have, jnp.floating):
      return leaf
    wide = jnp.promote_types(have, dtype)
    return leaf if wide == have else leaf.astype(wide)

  return jax.tree.map(cast, tree)


def floating_dtypes(tree: Any) -> set[str]:
  """The names of the floating dtypes of `tree`'s leaves."""
  return {str(leaf.dtype) for leaf in jax.tree.leaves(tree)
          if hasattr(leaf, "dtype")
          and jnp.issubdtype(leaf.dtype, jnp.floating)}


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
                x: Any) -> tuple[int | tuple[int, ...], ...]:
  """Per leaf, its row axes: those every product of `apply_fn(params, x)`
  contracts with an activation (`x` may be abstract), as a count `k` where
  they are the leading `k` axes (1 for a matrix), else as a tuple.

  A leaf of more than 2 axes is the matrix `[Π rows, Π rest]` when every
  `dot_general` it reaches (on either side, through copies, calls,
  reshapes and transposes) contracts the same set of its axes, in any
  order, or the rest of them (a product with the transpose), and none
  batches over its axes.

  Raises:
    ValueError: listing every leaf of more than 2 axes that is not such a
      matrix, each with the operation that prevents it.
  """
  leaves = selection.get_leaves(params, names)
  deep = sorted(n for n in names if np.ndim(leaves[n]) > 2)
  if not deep:
    return (1,) * len(names)
  f = lambda ws, x: apply_fn(selection.replace_leaves(params, ws), x)  # noqa: E731
  closed = jax.make_jaxpr(f)({n: leaves[n] for n in deep}, x)
  watched = {v: (n, selection.View.of(np.shape(leaves[n])))
             for v, n in zip(closed.jaxpr.invars[:len(deep)], deep,
                             strict=True)}
  uses = {n: [] for n in deep}
  _contractions(closed.jaxpr, watched, uses)
  rows, problems = {}, []
  for n in deep:
    shape = tuple(np.shape(leaves[n]))
    rows[n], why = _row_axes(shape, uses[n])
    if why:
      problems.append(f"{n} {shape}: {why}")
  if problems:
    raise ValueError(
        f"{len(problems)} {'leaf' if len(problems) == 1 else 'leaves'} "
        f"cannot be decomposed as matrices: "
        f"{'; '.join(problems)}. A leaf of more than 2 axes is decomposed "
        f"as the matrix [contracted axes, other axes] when every product "
        f"(dot_general) contracts the same set of its axes, in any order, "
        f"and none batches over its axes; store such a leaf as matrices or "
        f"leave it out of include")
  return tuple(rows.get(n, 1) for n in names)


class _Use(NamedTuple):
  """A use of a watched leaf: the operation, and for a product the leaf
  axes it contracts (`rows`, size-1 axes included; `core`, without them),
  those it both contracts and keeps (`split`) and its batch dims."""
  op: str
  rows: tuple[int, ...] | None = None
  core: frozenset = frozenset()
  split: tuple[int, ...] = ()
  batch: tuple[int, ...] = ()


def _row_axes(shape: tuple[int, ...], uses: list[_Use]
              ) -> tuple[int | tuple[int, ...], str | None]:
  """`(row axes, None)` from a leaf's uses, or `(1, why not)`."""
  products = [u for u in uses if u.rows is not None]
  if not products:
    met = sorted({u.op for u in uses})
    return 1, "used in no product" + (f" (it meets {', '.join(met)})"
                                      if met else "")
  every = frozenset(a for a, s in enumerate(shape) if s != 1)
  first = products[0]
  for u in products:
    if u.batch:
      return 1, (f"{u.op}, which uses it as a block-diagonal matrix (one "
                 f"block per index of the batch axes)")
    if u.split:
      return 1, f"{u.op} contracts its axes {u.split} only in part"
    if not u.core or u.core == every:
      return 1, f"{u.op} leaves {'no' if u.core else 'every'} axis free"
    if u.core not in (first.core, every - first.core):
      return 1, (f"its products contract different axes: {first.op}; "
                 f"{u.op}")
  rows = first.rows
  return (len(rows) if rows == tuple(range(len(rows))) else rows), None


_PASS = ("convert_element_type", "copy", "copy_p", "optimization_barrier")
CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call",
         "custom_vjp_call", "custom_vjp_call_jaxpr", "remat", "checkpoint")
_SUBJAXPRS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _contractions(jaxpr, watched: dict, uses: dict) -> None:
  """Appends to `uses[name]` every use of a watched variable (mapped to
  `(name, view)`): `dot_general`s with the axes they contract, and other
  operations by name (followed through copies, calls, reshapes and
  transposes)."""
  lit = jax.extend.core.Literal
  for eqn in jaxpr.eqns:
    ins = [None if isinstance(v, lit) else v for v in eqn.invars]
    hits = [j for j, v in enumerate(ins) if v in watched]
    if not hits:
      continue
    prim = eqn.primitive.name
    if prim == "dot_general":
      for j in hits:
        name, view = watched[ins[j]]
        uses[name].append(_product(eqn.params, j, view))
      continue
    if prim in _PASS:
      for j in hits:
        watched[eqn.outvars[min(j, len(eqn.outvars) - 1)]] = watched[ins[j]]
      continue
    name, view = watched.get(ins[0], (None, None))
    seen = view and selection.follow(view, prim, eqn.params)
    if seen is not None:
      watched[eqn.outvars[0]] = (name, seen)
      continue
    sub = next((eqn.params[p] for p in _SUBJAXPRS if p in eqn.params), None)
    if prim in CALLS and sub is not None:
      sub = getattr(sub, "jaxpr", sub)
      inner = {iv: watched[v] for v, iv in zip(ins, sub.invars, strict=False)
               if v in watched}
      _contractions(sub, inner, uses)
      continue
    for j in hits:
      uses[watched[ins[j]][0]].append(_Use(prim))


def _product(params, side: int, view: selection.View) -> _Use:
  """A `dot_general` with the watched leaf (seen as `view`) as its lhs
  (`side` 0) or rhs (1)."""
  (lc, rc), (lb, rb) = params["dimension_numbers"]
  dims, batch = ((lc, lb), (rc, rb))[side]
  axes = view.axes()
  free = [a for a in range(len(axes)) if a not in dims]

  def leaf_axes(of, unit=False):
    return tuple(sorted({k[0] for a in of for k, s in axes[a]
                         if unit or s != 1}))

  shown = tuple(dims) if view.is_identity() else leaf_axes(dims)
  op = f"dot_general contracting its axes {shown}"
  if batch:
    op += f" and batching over its axes {leaf_axes(batch, unit=True)}"
  core = leaf_axes(dims)
  return _Use(op, leaf_axes(dims, unit=True), frozenset(core),
              tuple(sorted(set(core) & set(leaf_axes(free)))), tuple(batch))
