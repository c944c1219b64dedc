"""Runs a target with its decomposed leaves kept in factored form.

The target's `apply_fn` multiplies activations by plain weight matrices. APD
wants it to multiply by weights `W = W0 + Σ_c α_c U_c V_c` without ever
materialising `C` full-size matrices, i.e. to compute

.. math::  a W = a W_0 + Σ_c α_c (a U_c) V_c

in `O(C·m·(i + o))` instead of `O(C·i·o)`. `trace` turns the per-example
function `forward(weights, x)` into a jaxpr once; `run` evaluates that jaxpr
with each decomposed leaf bound to a `Factored` value. Reshapes and
transposes of a `Factored` value keep it factored, seen through a
`selection.View` (`Target.batch` lays a matrix out as its leaf that way, and
models reshape kernels too); a `dot_general` that contracts, on either
side, exactly the axes that come from the matrix's rows (or columns) with
an activation is computed in the form above, as `a @ W` (or `a @ Wᵀ`)
with `a`'s contracted axes flattened in the matrix's order; calls (`jit`,
`custom_jvp`, ...) are entered; any other use of a `Factored` value (a
batch dim on it, a slice) materialises it, so every `apply_fn` runs
correctly, and the common ones run fast.

Each factored product is an *occurrence* (a leaf used twice, like TMS's `W`
and `Wᵀ`, has two). `run` returns every occurrence's input `a_k` and can add
a probe `δ_k` to its output `a_k W + δ_k`; gradient attributions
differentiate with respect to those probes (`attribution.py`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from typing import Callable
from typing import Mapping
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from apd_jax.core import selection
from apd_jax.core import target as target_lib
from apd_jax.fast import sparse

Array = jax.Array
CALLS = target_lib.CALLS
JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


@dataclasses.dataclass(frozen=True)
class Factored:
  """`W0 + Σ_c coef_c U_c V_c` (`W0` or the factors may be absent).

  Attributes:
    base: `W0 [i, o]` or None.
    U: `[C, i, m]` or None (then only `base`).
    V: `[C, m, o]` or None.
    coef: `[C]` coefficients α.
    transposed: the value stands for `Wᵀ`.
    name: the decomposed leaf it stands for.
    capacity: if set (a masked pass, `coef` a mask), vmapping computes only
      the at most `capacity` nonzero (example, component) entries of the
      batched mask (`sparse.py`).
    view: set where the model reshaped or transposed the matrix `[i, o]`
      into another array (an attention kernel `[heads, d_model, d_head]`):
      how that array is seen from the matrix (`selection.View`).
  """
  base: Array | None
  U: Array | None = None
  V: Array | None = None
  coef: Array | None = None
  transposed: bool = False
  name: str = ""
  capacity: int | None = None
  view: selection.View | None = None

  def T(self) -> Factored:
    return dataclasses.replace(self, transposed=not self.transposed)

  def factors(self) -> tuple[Array, Array]:
    """`(U, V)` of the value as used, i.e. of `Wᵀ` if transposed."""
    if not self.transposed:
      return self.U, self.V
    return (jnp.swapaxes(self.V, 1, 2), jnp.swapaxes(self.U, 1, 2))

  def dense(self) -> Array:
    w = 0.0 if self.base is None else self.base
    if self.U is not None:
      w = w + jnp.einsum("c,cim,cmo->io", self.coef, self.U, self.V)
    if self.view is not None:
      return self.view.apply(w)
    return w.T if self.transposed else w

  def matmul(self, a: Array) -> Array:
    """`a @ W` for `a [..., i]` in factored form."""
    out = 0.0
    if self.base is not None:
      out = a @ (self.base.T if self.transposed else self.base)
    if self.U is not None:
      U, V = self.factors()
      if self.capacity:
        out = out + sparse.masked_matmul(a, U, V, self.coef, self.capacity)
      else:
        out = out + sparse.dense_masked_matmul(a, U, V, self.coef)
    return out


@dataclasses.dataclass(frozen=True)
class Occurrence:
  """One factored product `a_k W_l` met while running: leaf and direction."""
  name: str
  transposed: bool


def trace(forward: Callable[[Mapping[str, Array], Array], Any],
          weights: Mapping[str, Any], x: Any) -> tuple[jcore.ClosedJaxpr, Any]:
  """`(jaxpr, out_tree)` of `forward(weights, x)` for the given shapes."""
  closed, out_shape = jax.make_jaxpr(forward, return_shape=True)(weights, x)
  return closed, jax.tree.structure(out_shape)


def run(closed: jcore.ClosedJaxpr, out_tree, names: Sequence[str],
        weights: Mapping[str, Factored | Array], x: Array,
        probes: Sequence[Array] | None = None, log: dict | None = None,
        coefs: Sequence[Array | None] | None = None
        ) -> tuple[Any, list[Array], list[Occurrence]]:
  """Evaluates a jaxpr from `trace` with (possibly) factored weights.

  Args:
    closed, out_tree: from `trace`, traced with a dict over `names`.
    names: the decomposed leaves, in the dict order used by `trace`.
    weights: each leaf as a `Factored` value or a plain array.
    x: the example.
    probes: one array per occurrence, added to that product's output.
    log: if given, `log["materialised"]` is set to `{leaf: operations}` for
      the leaves some operation needed as full matrices.
    coefs: per occurrence, its own coefficients `[..., C]` (occurrence k
      computes `Σ_c coefs[k]_c (a U_c) V_c`, without `W0`), `[..., C + 1]`
      (the last masks the Δ-component `W0 − Σ_c U_c V_c`) or None (it
      computes `a W0`): masks per product rather than per leaf.

  Returns:
    `(outputs, inputs, occurrences)`: the function's output pytree, each
    occurrence's input `a_k` and what it multiplied.
  """
  flat_w = [weights[n] for n in sorted(names)]
  inputs, occ = [], []
  ctx = dict(probes=probes, inputs=inputs, occ=occ, materialised={},
             coefs=coefs)
  outs = _eval(closed.jaxpr, closed.consts, [*flat_w, x], ctx)
  if log is not None:
    log["materialised"] = ctx["materialised"]
  return jax.tree.unflatten(out_tree, outs), inputs, occ


def _eval(jaxpr, consts, args, ctx) -> list[Any]:
  env = {}

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  for v, val in zip(jaxpr.constvars, consts, strict=True):
    env[v] = val
  for v, val in zip(jaxpr.invars, args, strict=True):
    env[v] = val
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    if any(isinstance(v, Factored) for v in invals):
      outs = _factored_eqn(eqn, invals, ctx)
    else:
      outs = bind(eqn, invals)
    for v, val in zip(eqn.outvars, outs, strict=True):
      env[v] = val
  return [read(v) for v in jaxpr.outvars]


def passed_on(eqn, invals) -> list[Any] | None:
  """The outputs of a reshape, transpose, copy or same-dtype conversion of a
  `Factored` value (still factored); None for any other operation."""
  name, params = eqn.primitive.name, eqn.params
  w = invals[0]
  if name in ("copy", "copy_p", "optimization_barrier"):
    return list(invals)
  if name == "convert_element_type":
    return [w] if params["new_dtype"] == _dtype(w) else None
  if not isinstance(w, Factored):
    return None
  view = selection.follow(_view(w), name, params)
  return None if view is None else [_viewed(w, view)]


def _view(w: Factored) -> selection.View:
  """How the value `w` stands for is seen from its matrix `[i, o]`."""
  if w.view is not None:
    return w.view
  view = selection.View.of(_matrix_shape(w))
  return view.transpose((1, 0)) if w.transposed else view


def _viewed(w: Factored, view: selection.View) -> Factored:
  """`w` seen as `view`: a plain (maybe transposed) matrix where it is."""
  keys = [k for k, s in view.atoms if s != 1]
  i, o = _matrix_shape(w)
  if view.shape == (i, o) and keys == sorted(keys):
    return dataclasses.replace(w, view=None, transposed=False)
  if view.shape == (o, i) and keys == sorted(keys, key=lambda k: (-k[0], k)):
    return dataclasses.replace(w, view=None, transposed=True)
  return dataclasses.replace(w, view=view, transposed=False)


def call_body(eqn) -> tuple[Any, Sequence[Any]] | None:
  """`(jaxpr, consts)` of a call (`jit`, `custom_jvp_call`, ...); else None."""
  if eqn.primitive.name not in CALLS:
    return None
  sub = next((eqn.params[p] for p in JAXPR_PARAMS if p in eqn.params), None)
  if sub is None:
    return None
  return (sub.jaxpr if hasattr(sub, "jaxpr") else sub,
          getattr(sub, "consts", []))


def _factored_eqn(eqn, invals, ctx) -> list[Any]:
  outs = passed_on(eqn, invals)
  if outs is not None:
    return outs
  if eqn.primitive.name == "dot_general":
    out = _factored_dot(invals, eqn, ctx)
    if out is not None:
      return [out]
  body = call_body(eqn)
  if body is not None:
    return _eval(*body, invals, ctx)
  for v in invals:
    if isinstance(v, Factored):
      ctx["materialised"].setdefault(v.name, set()).add(_describe(eqn))
  return bind(eqn, [v.dense() if isinstance(v, Factored) else v
                    for v in invals])


def _describe(eqn) -> str:
  """An operation as an error message names it: primitive and axes."""
  if eqn.primitive.name != "dot_general":
    return eqn.primitive.name
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  return (f"dot_general contracting {tuple(lc)} with {tuple(rc)}"
          + (f", batch {tuple(lb)} with {tuple(rb)}" if lb else ""))


def bind(eqn, invals) -> list[Any]:
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = []
  if isinstance(params, tuple):  # older JAX: (subfuns, params)
    subfuns, params = params
  outs = eqn.primitive.bind(*subfuns, *invals, **params)
  return outs if eqn.primitive.multiple_results else [outs]


def _matrix_shape(f: Factored) -> tuple[int, int]:
  if f.base is not None:
    return tuple(f.base.shape)
  return (f.U.shape[1], f.V.shape[2])


def _dtype(f: Factored):
  return (f.base if f.base is not None else f.U).dtype


def product(params, invals) -> tuple[Factored, Array, int, bool] | None:
  """`(w, a, a_dim, w_is_rhs)` if a `dot_general` is `a @ W` or `W @ a` with
  one factored operand, `w` oriented so the product is
  `moveaxis(a, a_dim, -1) @ w` (moved to the front if `W` was the lhs);
  else None."""
  (lc, rc), (lb, rb) = params["dimension_numbers"]
  lhs, rhs = invals
  if lb or rb or len(lc) != 1 or isinstance(lhs, Factored) == isinstance(
      rhs, Factored) or any(isinstance(v, Factored) and v.view is not None
                            for v in invals):
    return None
  w_is_rhs = isinstance(rhs, Factored)
  w, a = (rhs, lhs) if w_is_rhs else (lhs, rhs)
  w_dim, a_dim = (rc[0], lc[0]) if w_is_rhs else (lc[0], rc[0])
  return (w.T() if w_dim == 1 else w), a, a_dim, w_is_rhs


def oriented_product(params, invals
                     ) -> tuple[Factored, Array, Callable] | None:
  """`(w, a, finish)` if a `dot_general` multiplies one `Factored` operand,
  on either side and seen through reshapes and transposes, by contracting
  exactly the axes that come from its matrix's rows (or columns): then the
  product is `finish(a @ w)`, with `w` the matrix (or its transpose) and
  `a [..., i]` the other operand, its free axes first and its contracted
  ones flattened in the matrix's order; else None (a batch dim on `w`,
  or contracted axes that mix rows and columns)."""
  (lc, rc), (lb, rb) = params["dimension_numbers"]
  lhs, rhs = invals
  if lb or rb or isinstance(lhs, Factored) == isinstance(rhs, Factored):
    return None
  w_is_rhs = isinstance(rhs, Factored)
  w, a, w_dims, a_dims = ((rhs, lhs, rc, lc) if w_is_rhs
                          else (lhs, rhs, lc, rc))
  view = _view(w)
  axes = view.axes()
  free = [j for j in range(len(axes)) if j not in w_dims]
  inner = [atom for j in w_dims for atom in axes[j]]
  outer = [atom for j in free for atom in axes[j]]
  side = {k[0] for k, s in inner if s != 1}
  if len(side) != 1 or side & {k[0] for k, s in outer if s != 1}:
    return None
  lead = a.ndim - len(a_dims)
  a = jnp.moveaxis(a, tuple(a_dims), tuple(range(lead, a.ndim)))
  a = _to_order(a.reshape(a.shape[:lead] + tuple(s for _, s in inner)),
                lead, inner, to_source=True)
  a = a.reshape(a.shape[:lead] + (math.prod(a.shape[lead:]),))
  by_key = sorted(outer)

  def finish(out):
    out = out.reshape(out.shape[:lead] + tuple(s for _, s in by_key))
    out = _to_order(out, lead, outer, to_source=False)
    out = out.reshape(out.shape[:lead] + tuple(view.shape[j] for j in free))
    if not w_is_rhs:   # dot_general puts the lhs' free axes first
      out = jnp.moveaxis(out, tuple(range(lead, out.ndim)),
                         tuple(range(out.ndim - lead)))
    return out

  w = dataclasses.replace(w, view=None, transposed=side == {1})
  return w, a, finish


def _to_order(x: Array, lead: int, atoms, to_source: bool) -> Array:
  """`x [*lead, *atoms]` with its trailing atom axes moved from `atoms`'
  order to the source's (sorted keys), or back."""
  order = sorted(range(len(atoms)), key=lambda j: atoms[j][0])
  perm = order if to_source else [int(j) for j in np.argsort(order)]
  if perm == list(range(len(atoms))):
    return x
  return jnp.transpose(x, tuple(range(lead)) + tuple(lead + j for j in perm))


def _factored_dot(invals, eqn, ctx) -> Array | None:
  """A product of one factored operand; None if not one."""
  found = oriented_product(eqn.params, invals)
  if found is None:
    return None
  w, a, finish = found
  return finish(_record(ctx, w, a, eqn.outvars[0].aval.dtype))


def _record(ctx, w: Factored, a: Array, dtype) -> Array:
  """`a @ W` for `a [..., i]` as this occurrence computes it (own
  coefficients, probe), with its input and occurrence recorded, in the
  traced product's dtype `dtype` (float32 factors beside a bfloat16
  target give its bfloat16, as the rest of the traced model expects)."""
  k = len(ctx["inputs"])
  ctx["inputs"].append(a)
  ctx["occ"].append(Occurrence(w.name, w.transposed))
  if ctx["coefs"] is not None:
    out = _own_coefs(w, a, ctx["coefs"][k])
  else:
    out = w.matmul(a)
  if ctx["probes"] is not None:
    out = out + ctx["probes"][k]
  return out.astype(dtype)


def _own_coefs(w: Factored, a: Array, coef: Array | None) -> Array:
  """`a W0` (coef None) or `Σ_c coef_c (a U_c) V_c` with `coef [..., C]`
  (one coefficient per component and per leading position of `a`).

  With `C + 1` coefficients the last masks the Δ-component, the rest of
  the weight `Δ = W0 − Σ_c U_c V_c`:
  `Σ_c coef_c (a U_c) V_c + coef_Δ a Δ
   = Σ_c (coef_c − coef_Δ) (a U_c) V_c + coef_Δ a W0`
  (so every coefficient at 1 gives `a W0` exactly; Δ is never formed)."""
  base = None if w.base is None else (w.base.T if w.transposed else w.base)
  if coef is None:
    return a @ base
  if coef.shape[-1] == w.U.shape[0] + 1:
    delta = coef[..., -1:]
    return (_own_coefs(w, a, coef[..., :-1] - delta)
            + delta.reshape((1,) * max(0, a.ndim - delta.ndim)
                            + delta.shape) * (a @ base))
  # A per-position mask [T, C] meets the example's input [1, T, i].
  coef = coef.reshape((1,) * max(0, a.ndim - coef.ndim) + coef.shape)
  if coef.shape[:-1] != a.shape[:-1]:
    raise ValueError(
        f"a mask of shape {coef.shape} does not fit the input "
        f"{a.shape} of a product with {w.name}: per-position masks need "
        f"every decomposed product applied to activations [T, i]")
  U, V = w.factors()
  z = jnp.einsum("...i,cim->...cm", a, U) * coef[..., None]
  return jnp.einsum("...cm,cmo->...o", z, V)


class Model:
  """A target's per-example forward pass, traced once, run factored.

  `Model(forward, weights, x)` traces `forward(weights, x) -> (y, acts)` for
  one example `x`; the methods below run it on one example (vmap for a
  batch).
  """

  def __init__(self, forward, weights: Mapping[str, Array], x: Array):
    self.names = tuple(sorted(weights))
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
    self.jaxpr, self.out_tree = trace(
        forward, {n: spec(w) for n, w in weights.items()}, spec(x))
    log, found = {}, []

    def probe(xb):
      out, _, occ = self({n: Factored(w, name=n) for n, w in weights.items()},
                         xb, log=log)
      found.extend(occ)
      return out

    jax.eval_shape(probe, spec(x))
    # The factored products one pass meets, in order.
    self.occurrences = tuple(found)
    # Leaves used other than in products: attributions need their P_c.
    self.materialised = frozenset(log["materialised"])
    # For each of them, the operations that use it so (primitive, axes).
    self.other_uses = {n: tuple(sorted(ops))
                       for n, ops in sorted(log["materialised"].items())}

  def describe_other_uses(self) -> str:
    """`'name: op, op; name: op'`, for an error message."""
    return "; ".join(f"{n}: {', '.join(ops)}"
                     for n, ops in self.other_uses.items())

  def __call__(self, weights, x, probes=None, log=None, coefs=None):
    return run(self.jaxpr, self.out_tree, self.names, weights, x, probes,
               log, coefs)

  def masked(self, U: Mapping[str, Array], V: Mapping[str, Array],
             mask: Array, x: Array, capacity: int | None = None) -> Any:
    """`forward(W(mask), x)` with `W_l(α) = Σ_c α_c U_{l,c} V_{l,c}`.

    With `capacity`, a bound on the nonzero entries of the batched mask,
    vmapping this skips the components the mask switches off. A mask
    `[T, C]` is one per position: every product's input `a [T, i]` is
    masked row by row, `Σ_c mask_{tc} (a_t U_c) V_c`.
    """
    if jnp.ndim(mask) > 1:
      weights = {n: Factored(None, U[n], V[n], name=n) for n in U}
      return self(weights, x, coefs=[mask] * len(self.occurrences))[0]
    weights = {n: Factored(None, U[n], V[n], mask, name=n, capacity=capacity)
               for n in U}
    return self(weights, x)[0]

  def attributions(self, base: Mapping[str, Array], U: Mapping[str, Array],
                   V: Mapping[str, Array], x: Array, *, mode: str = "forward",
                   contract: str | Sequence[str] = "direct",
                   projections: int = 0, key: Array | None = None,
                   keep: int = 0) -> tuple[Array, Any]:
    """`(A² [C], forward(base, x))`: gradient attributions at `base`.

    `A_c² = Σ_o (Σ_k ⟨∂y_o/∂δ_k, a_k U_c V_c⟩)²`, the output's derivative
    along component c, from probes `δ_k` on each product's output. Forward
    mode pushes the C direct effects `a_k U_c V_c` through the network;
    reverse mode pulls back the outputs' cotangents `G_k = ∂y/∂δ_k` and
    contracts them per occurrence, either with the direct effects
    ('direct': `G_k (a_k U V)ᵀ`) or through the factors ('cotangent':
    `(G_k Vᵀ)·(a_k U)`, cheap when `G_k` does not depend on the example).

    With `projections = k > 0` (reverse mode), the d_out outputs are replaced
    by k random projections `R y`, `R ~ N(0, 1/k)^{k×d_out}` drawn from
    `key`: `E_R ||R J_c||² = ||J_c||²`, so the estimate is unbiased and costs
    k instead of d_out cotangents.

    With `keep = 1` the sum over outputs runs over the output's last axes
    only: `A² [T, C]`, `A_{tc}² = Σ_o (∂y_{to}/∂α_c)²`, the attribution of
    the outputs at each position `t` (a sequence model's logits `[T, V]`).
    """
    if mode not in ("forward", "reverse"):
      raise ValueError(f"mode must be 'forward' or 'reverse' here, got "
                       f"{mode!r} ('lazy' is `fast.attribute.attributions`)")
    weights = {n: Factored(base[n], name=n) for n in self.names}
    out, inputs, occ = self(weights, x)
    shapes = [a.shape[:-1] + (_out_dim(U, V, o),)
              for a, o in zip(inputs, occ, strict=True)]
    # Each probe in its product's output dtype (a bfloat16 input times a
    # float32 factor gives float32).
    zeros = [jnp.zeros(s, jnp.result_type(a.dtype, factors_of(U, V, o)[0]
                                          .dtype))
             for s, a, o in zip(shapes, inputs, occ, strict=True)]

    project = None
    if projections:
      d_out = jax.eval_shape(lambda: out[0]).size
      project = jax.random.normal(key, (projections, d_out),
                                  inputs[0].dtype) / projections ** 0.5

    def probed(deltas):
      y = self(weights, x, deltas)[0][0]
      return y if project is None else project @ y.reshape(-1)

    C = next(iter(U.values())).shape[0]
    lead = jnp.shape(out[0])[:keep]
    if keep and (projections or len(lead) < keep):
      raise ValueError(f"attributions per position need exact attributions "
                       f"and an output of more than {keep} axes (got "
                       f"projections={projections}, output {lead})")
    if mode == "forward" and not projections:
      direct = [_direct(a, U, V, o) for a, o in zip(inputs, occ, strict=True)]
      J = jax.vmap(lambda t: jax.jvp(probed, (zeros,), (t,))[1])(direct)
      J = J.reshape(C, -1).T
    else:
      if isinstance(contract, str):
        contract = (contract,) * len(occ)
      G = jax.jacrev(probed)(zeros)
      J = sum(_contract(g, a, U, V, o, how)
              for g, a, o, how in zip(G, inputs, occ, contract, strict=True))
    A2 = jnp.sum((J ** 2).reshape((math.prod(lead), -1, C)), axis=1)
    return A2.reshape(lead + (C,)), out


def factors_of(U, V, occ: Occurrence) -> tuple[Array, Array]:
  u, v = U[occ.name], V[occ.name]
  if occ.transposed:
    return jnp.swapaxes(v, 1, 2), jnp.swapaxes(u, 1, 2)
  return u, v


def _out_dim(U, V, occ: Occurrence) -> int:
  return factors_of(U, V, occ)[1].shape[-1]


def _direct(a: Array, U, V, occ: Occurrence) -> Array:
  """`a U_c V_c` for every c: `[C, ..., o]`."""
  u, v = factors_of(U, V, occ)
  return jnp.einsum("c...m,cmo->c...o", jnp.einsum("...i,cim->c...m", a, u), v)

def _contract(g: Array, a: Array, U, V, occ: Occurrence, how: str) -> Array:
  """`J[d, c] = ⟨G[d], a U_c V_c⟩` with `g [*y, ..., o]`: `[d_out, C]`."""
  u, v = factors_of(U, V, occ)
  lead = a.ndim - 1
  g = g.reshape((-1,) + g.shape[g.ndim - lead - 1:])       # [d, ..., o]
  if how == "direct":
    return jnp.einsum("d...o,c...o->dc", g, _direct(a, U, V, occ))
  q = jnp.einsum("d...o,cmo->d...cm", g, v)
  return jnp.einsum("d...cm,...cm->dc", q, jnp.einsum("...i,cim->...cm", a, u))
