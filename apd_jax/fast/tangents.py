"""Forward-mode attributions with tangents kept as coefficients × bases.

Forward mode pushes, for every component c, the direct effect
`a_k U_c V_c` of each factored product through the rest of the network.
Pushed as dense `[C, ..., o]` arrays, every later layer costs `C·i·o` per
example. But most of the network is linear in the tangent with weights that
do not depend on the example, so the tangent can be kept as

.. math::  T[c, …, o] = Σ_t \\mathrm{coef}_t[c, …, r] \\, B_t[(c,) r, o]

with a per-example coefficient of small width r and a basis `B` shared by
the batch. A product with a shared weight `W` updates only the basis,
`B ← B W` (computed once per batch, not per example), and the coefficient
is multiplied in only where the network does something per example (a
ReLU's mask, a product with an activation) or at the output. A product's
own direct effect starts as `coef = a U` (width m), `B = V`. A residual
stream's sum of terms stays a list of terms. When `B W` would make the
basis wider than the coefficient is narrow (`r > o`), the term is
multiplied out instead, so a tangent never costs more than the dense form.

The primal values are tracked in the same form where that is narrower
(`h = x W_E + ReLU(h W_in) W_out` is `[x, mid] [W_E; W_out]`: width 125
instead of 1000), so a product's direct effect is computed as
`a U = Σ_t coef_t (B_t U)`: the shared `B_t U` once per batch, and only
`Σ_t r_t` instead of `i` multiply-adds per example and component factor.

Everything else falls back to `jax.jvp` of that one operation on the
dense tangent, vmapped over C, so any `apply_fn` stays exact.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from apd_jax.fast import factored

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Lazy:
  """`Σ_t coef_t B_t`: coef `[C, ..., r]`, basis `[r, o]`, `[C, r, o]` or
  None (the coefficient is the tangent itself)."""
  terms: tuple[tuple[Array, Array | None], ...]

  def dense(self) -> Array:
    return sum(_multiply(c, b) for c, b in self.terms)

  def times(self, w: Array) -> Lazy:
    """The tangent of `a @ w` for a shared `w [i, o]`."""
    return Lazy(tuple(_times(c, b, w) for c, b in self.terms))

  def neg(self) -> Lazy:
    return Lazy(tuple((-c, b) for c, b in self.terms))


def _multiply(coef: Array, basis: Array | None) -> Array:
  if basis is None:
    return coef
  if basis.ndim == 2:
    return jnp.einsum("c...r,ro->c...o", coef, basis)
  return jnp.einsum("c...r,cro->c...o", coef, basis)


def _times(coef, basis, w):
  if basis is None:
    basis = w
  elif basis.ndim == 2:
    basis = basis @ w
  else:
    basis = jnp.einsum("cri,io->cro", basis, w)
  if coef.shape[-1] <= w.shape[-1]:
    return coef, basis
  return _multiply(coef, basis), None


def attributions(model: factored.Model, base, U, V, x: Array
                 ) -> tuple[Array, object]:
  """`(A² [C], forward(base, x))` for one example: the exact attributions
  of `factored.Model.attributions`, in forward mode."""
  flat_w = [factored.Factored(base[n], name=n) for n in model.names]
  args = [(w, None, False, None) for w in flat_w] + [(x, None, True, None)]
  outs = _eval(model.jaxpr.jaxpr, model.jaxpr.consts, args, (U, V))
  primal = jax.tree.unflatten(model.out_tree, [o[0] for o in outs])
  tangent = jax.tree.unflatten(model.out_tree, [o[1] for o in outs])[0]
  y = primal[0]
  C = next(iter(U.values())).shape[0]
  if tangent is None:
    return jnp.zeros(C, y.dtype), primal
  return squared_norms(tangent), primal


def squared_norms(t: Lazy) -> Array:
  """`Σ_{…,o} T[c, …, o]²` per c, without forming `T`: the terms with a
  basis meet through the Gram matrices `B_s B_tᵀ` (shared: once per batch),
  the dense ones are summed first.

  .. math::  ||Σ_t coef_t B_t||² = Σ_{s,t} coef_s (B_s B_tᵀ) coef_tᵀ
  """
  dense = [c for c, b in t.terms if b is None]
  based = [(c, b) for c, b in t.terms if b is not None]
  total = 0.0
  if dense:
    d = sum(dense)
    total = jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=1)
    for c, b in based:  # 2⟨D, coef B⟩ = 2⟨D Bᵀ, coef⟩
      db = (jnp.einsum("c...o,ro->c...r", d, b) if b.ndim == 2
            else jnp.einsum("c...o,cro->c...r", d, b))
      total = total + 2 * _pair(db, c)
  for i, (ci, bi) in enumerate(based):
    for j, (cj, bj) in enumerate(based[i:], start=i):
      gram = _gram(bi, bj)
      q = (jnp.einsum("c...r,rs->c...s", ci, gram) if gram.ndim == 2
           else jnp.einsum("c...r,crs->c...s", ci, gram))
      total = total + (1 if i == j else 2) * _pair(q, cj)
  return total


def _gram(a: Array, b: Array) -> Array:
  """`a bᵀ` over the last axis, per component if either is `[C, r, o]`."""
  if a.ndim == 2 and b.ndim == 2:
    return a @ b.T
  if a.ndim == 2:
    return jnp.einsum("ro,cso->crs", a, b)
  if b.ndim == 2:
    return jnp.einsum("cro,so->crs", a, b)
  return jnp.einsum("cro,cso->crs", a, b)


def _pair(a: Array, b: Array) -> Array:
  """`Σ_{…, r} a[c, …, r] b[c, …, r]` per c."""
  a = a.reshape(a.shape[0], -1)
  return jnp.einsum("cr,cr->c", a, b.reshape(a.shape))


def _eval(jaxpr, consts, args, factors):
  """Evaluates `jaxpr` on `(value, tangent, per_example, form)` entries;
  `form`: the value as a one-component `Lazy` (`coef [1, …, r]`) where one
  narrower than the value is known, else None."""
  env = {}

  def read(v):
    if isinstance(v, jcore.Literal):
      return v.val, None, False, None
    return env[v]

  for v, c in zip(jaxpr.constvars, consts, strict=True):
    env[v] = (c, None, False, None)
  for v, a in zip(jaxpr.invars, args, strict=True):
    env[v] = a
  for eqn in jaxpr.eqns:
    outs = _eqn(eqn, [read(v) for v in eqn.invars], factors)
    for v, o in zip(eqn.outvars, outs, strict=True):
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


def _eqn(eqn, ins, factors):
  vals = [i[0] for i in ins]
  tans = [i[1] for i in ins]
  per_example = any(i[2] for i in ins)
  name = eqn.primitive.name
  has_leaf = any(isinstance(v, factored.Factored) for v in vals)
  body = factored.call_body(eqn)
  if body is not None and (has_leaf or not name.startswith("custom_jvp")):
    return _eval(*body, ins, factors)
  if has_leaf:
    outs = factored.passed_on(eqn, vals)
    if outs is not None:
      return [(o, t, p, f) for o, (_, t, p, f) in zip(outs, ins, strict=True)]
    return [_leaf(eqn, ins, factors)]
  form = _form(eqn, ins) if len(eqn.outvars) == 1 else None
  if all(t is None for t in tans):
    return [(o, None, per_example, form) for o in factored.bind(eqn, vals)]
  lazy = _linear(eqn, [i[:3] for i in ins])
  if lazy is not None:
    (value,) = factored.bind(eqn, vals)
    return [(value, lazy, per_example, form)]
  return [(o, t, per_example, form) for o, t in _fallback(eqn, vals, tans)]


def _leaf(eqn, ins, factors):
  """A product with a decomposed leaf: where its components' direct effects
  `a U_c V_c` enter as `coef = a U`, `B = V`."""
  w = next(i[0] for i in ins if isinstance(i[0], factored.Factored))
  name = eqn.primitive.name
  found = (factored.product(eqn.params, [i[0] for i in ins])
           if name == "dot_general" else None)
  if found is None:
    raise ValueError(
        f"lazy attributions need every use of a decomposed leaf to be a "
        f"matrix product; {w.name} meets '{name}' (use mode 'forward')")
  w, a, a_dim, w_is_rhs = found
  _, a_t, _, a_form = ins[0 if w_is_rhs else 1]
  last = a_dim == a.ndim - 1
  a = jnp.moveaxis(a, a_dim, -1)
  u, v = factored.factors_of(*factors, factored.Occurrence(w.name,
                                                           w.transposed))
  t = Lazy(((_times_factor(a, a_form if last else None, u), v),))
  if a_t is not None and a_dim == a.ndim - 1:
    t = Lazy(t.terms + a_t.times(w.dense()).terms)
  elif a_t is not None:
    t = Lazy(((t.dense() + jnp.moveaxis(a_t.dense(), a_dim + 1, -1)
               @ w.dense(), None),))
  value = w.matmul(a)
  if not w_is_rhs:
    value = jnp.moveaxis(value, -1, 0)
    t = Lazy(((jnp.moveaxis(t.dense(), -1, 1), None),))
  form = (_useful(_start(a, a_form).times(w.dense()), value.shape[-1])
          if w_is_rhs and last else None)
  dtype = eqn.params.get("preferred_element_type") or value.dtype
  return value.astype(dtype), t, True, form


def _times_factor(a: Array, form: Lazy | None, u: Array) -> Array:
  """`a U_c` for every c, `[C, …, m]`; from `a`'s form if it has one:
  `Σ_t coef_t (B_t U_c)`."""
  if form is None:
    return jnp.einsum("...i,cim->c...m", a, u)
  return sum(jnp.einsum("...r,crm->c...m", c[0],
                        jnp.einsum("ri,cim->crm", b, u))
             for c, b in form.terms)


def _start(a: Array, form: Lazy | None) -> Lazy:
  """`a`'s form, or `a` itself as its own coefficient."""
  return form if form is not None else Lazy(((a[None], None),))


def _useful(form: Lazy | None, width: int) -> Lazy | None:
  """`form` if every term has a basis and their widths sum below `width`."""
  if form is None or any(b is None for _, b in form.terms):
    return None
  return form if sum(c.shape[-1] for c, _ in form.terms) < width else None


def _form(eqn, ins) -> Lazy | None:
  """The form of a linear operation's value from its inputs' forms (by the
  tangents' rules); a product with a shared weight starts one from its
  input. None where unknown or not narrower than the value."""
  vals, _, per, forms = zip(*ins, strict=True)
  shape = eqn.outvars[0].aval.shape
  if not shape or not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.inexact):
    return None
  if eqn.primitive.name == "dot_general" and forms[0] is None:
    forms = (_start(vals[0], None),) + forms[1:]
  known = sum(f is not None for f in forms)
  if known != (len(forms) if eqn.primitive.name in ("add", "add_any", "sub")
               else 1):
    return None
  return _useful(_linear(eqn, list(zip(vals, forms, per, strict=True))),
                 shape[-1])


def _linear(eqn, ins) -> Lazy | None:
  """The tangent of a linear operation that keeps the coefficient × basis
  form; None where the fallback applies."""
  (vals, tans, per) = zip(*ins, strict=True)
  name = eqn.primitive.name
  shape = eqn.outvars[0].aval.shape
  same = all(getattr(v, "shape", None) == shape for v in vals)
  if name in ("add", "add_any") and same:
    return Lazy(sum((t.terms for t in tans if t is not None), ()))
  if name == "sub" and same:
    a, b = tans
    return Lazy((() if a is None else a.terms)
                + (() if b is None else b.neg().terms))
  if name == "neg":
    return tans[0].neg()
  if name == "mul" and None in tans:
    k = tans.index(None)
    if jnp.ndim(vals[k]) == 0 and not per[k]:
      s = vals[k]
      return Lazy(tuple((c * s, b) for c, b in tans[1 - k].terms))
  if name in ("copy", "copy_p") or (
      name == "convert_element_type"
      and eqn.params["new_dtype"] == vals[0].dtype):
    return tans[0]
  if tans[0] is not None and all(t is None for t in tans[1:]):
    reshape = _leading_axes_op(eqn, vals[0])
    if reshape is not None:
      return Lazy(tuple((reshape(c), b) for c, b in tans[0].terms))
  if name == "dot_general":
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = vals
    if (not lb and not rb and len(lc) == 1 and tans[1] is None
        and not per[1] and lc[0] == lhs.ndim - 1 and jnp.ndim(rhs) == 2):
      return tans[0].times(rhs if rc[0] == 0 else rhs.T)
  return None


def _leading_axes_op(eqn, x):
  """For an operation that moves, drops or adds only leading axes of `x`
  (the last one passes whole), the same operation on a coefficient
  `[C, …, r]`; else None."""
  p, name, last = eqn.params, eqn.primitive.name, x.ndim - 1
  shape = eqn.outvars[0].aval.shape
  if not shape or shape[-1] != x.shape[-1]:
    return None
  if name == "squeeze" and last not in p["dimensions"]:
    return lambda c: jax.lax.squeeze(c, [d + 1 for d in p["dimensions"]])
  if name == "reshape" and p.get("dimensions") is None:
    return lambda c: c.reshape((c.shape[0],) + shape[:-1] + (c.shape[-1],))
  if name == "broadcast_in_dim" and p["broadcast_dimensions"][-1:] == (
      len(shape) - 1,):
    dims = (0,) + tuple(d + 1 for d in p["broadcast_dimensions"])
    return lambda c: jax.lax.broadcast_in_dim(
        c, (c.shape[0],) + shape[:-1] + (c.shape[-1],), dims)
  if name == "slice" and (p["strides"] is None or p["strides"][-1] == 1) and (
      p["start_indices"][-1] == 0):
    strides = None if p["strides"] is None else (1,) + tuple(p["strides"])
    return lambda c: jax.lax.slice(
        c, (0,) + tuple(p["start_indices"][:-1]) + (0,),
        c.shape[:1] + tuple(p["limit_indices"][:-1]) + c.shape[-1:], strides)
  return None


def _fallback(eqn, vals, tans):
  """`jax.jvp` of the one operation on dense tangents, vmapped over C."""
  idx = [k for k, t in enumerate(tans) if t is not None]

  def f(*diff):
    full = list(vals)
    for k, d in zip(idx, diff, strict=True):
      full[k] = d
    return factored.bind(eqn, full)

  primals = [vals[k] for k in idx]
  dense = [tans[k].dense() for k in idx]
  outs = factored.bind(eqn, vals)
  touts = jax.vmap(lambda *ts: jax.jvp(f, primals, list(ts))[1])(*dense)
  return [(o, Lazy(((t, None),)) if jnp.issubdtype(o.dtype, jnp.inexact)
           else None) for o, t in zip(outs, touts, strict=True)]
