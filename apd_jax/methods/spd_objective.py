"""The weighted SPD objective (Bushnaq, Braun & Sharkey 2025).

.. math::  L = c_f L_{faith} + β_1 L_{stoch} + β_2 L_{layer} + β_3 L_{imp}

(`L_layer` one pass per product with only it masked, or with the method's
`layerwise_routing='subset'` one pass masking a random subset of them per
example.)

Each decomposed matrix `W_l` has its own `C_l` rank-one subcomponents
`u_c v_cᵀ` (factors `U[l] [C_l, i, 1]`, `V[l] [C_l, 1, o]`). Every factored
product `a_k W_l` of the target (an *occurrence*: TMS uses `W` and `Wᵀ`)
has a causal-importance function per subcomponent, a tiny MLP on the inner
activation `h_c = a_k · u_c` (or, with the method's `ci_fn`, a function of
the whole input `a_k`, `ci_kinds`):

.. math::  G_{k,c} = σ_{lower}(g_{k,c}(h_c)), \\quad
           m_{k,c} = G_{k,c} + (1 − G_{k,c}) r, \\quad r \\sim U(0, 1)

and the masked product is `Σ_c m_{k,c} h_c v_cᵀ` (factored, never a
`[C, i, o]` weight). One call computes for a batch: the target's pass (its
outputs and each product's input `a_k`), the causal importances, one pass
with every product masked, one pass per product with only that product
masked, and every loss term.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import NamedTuple
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from apd_jax.core import components as comp_lib
from apd_jax.core import losses
from apd_jax.core.target import Target
from apd_jax.fast import factored
from apd_jax.methods import ci_functions
from apd_jax.methods import ci_kinds
from apd_jax.methods import routing

Array = jax.Array
RECONS = ("mse", "kl")
LEAK = 0.01       # slope of the hard sigmoids' leaky sides
EPS = 1e-12       # added to G before the power of L_imp


class Factors:
  """The rank-one factors' views shared by SPD's and VPD's parameters
  (`U: {leaf: [C_l, i, 1]}`)."""

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.U)

  @property
  def n_components(self) -> dict[str, int]:
    return {n: u.shape[0] for n, u in self.U.items()}


@flax.struct.dataclass
class SPDParams(Factors):
  """What SPD trains: rank-one factors per decomposed leaf and, per
  occurrence, the causal-importance MLPs `1 → d → 1` of its subcomponents
  (`w1, b1, w2: [C_l, d]`, `b2: [C_l]`)."""
  U: dict[str, Array]                  # leaf -> [C_l, i, 1]
  V: dict[str, Array]                  # leaf -> [C_l, 1, o]
  gates: dict[str, dict[str, Array]]   # occurrence label -> MLP weights


@dataclasses.dataclass(frozen=True)
class Plan:
  """The target's factored products, as SPD sees them: one label per
  occurrence (the leaf's name if it is used once, `name#j` for its j-th use
  otherwise) and the leaf it multiplies by."""
  labels: tuple[str, ...] = ()
  leaves: tuple[str, ...] = ()
  transposed: tuple[bool, ...] = ()

  def by_label(self, per_leaf: dict[str, Any]) -> dict[str, Any]:
    """`{label: per_leaf[its leaf]}`, e.g. each product's `C`."""
    return {label: per_leaf[leaf] for label, leaf in
            zip(self.labels, self.leaves, strict=True)}


def make_plan(target: Target, x0: Any) -> Plan:
  """The occurrences of `target` on one example shaped like `x0`."""
  model = factored.Model(target.forward, target.weights, x0)
  if model.materialised:
    raise ValueError(f"SPD needs every decomposed leaf used in matrix "
                     f"products a @ W; {model.describe_other_uses()}")
  occ = model.occurrences
  if not occ:
    raise ValueError("the decomposed leaves are not used in any product")
  count = {o.name: sum(p.name == o.name for p in occ) for o in occ}
  seen: dict[str, int] = {}
  labels = []
  for o in occ:
    j = seen.get(o.name, 0)
    seen[o.name] = j + 1
    labels.append(o.name if count[o.name] == 1 else f"{o.name}#{j}")
  return Plan(tuple(labels), tuple(o.name for o in occ),
              tuple(o.transposed for o in occ))


class Hypers(NamedTuple):
  """SPD's numeric options that may differ between the runs of a sweep
  (traced; see `apd_objective.Hypers`)."""
  faithfulness_coeff: float | Array
  stochastic_coeff: float | Array
  layerwise_coeff: float | Array
  importance_coeff: float | Array
  importance_p: float | Array
  lr_scale: float | Array = 1.0


# -- the hard sigmoids ---------------------------------------------------------


@jax.custom_vjp
def lower_leaky_hard_sigmoid(z: Array) -> Array:
  """`clip(z, 0, 1)`; its gradient is 1 on `(0, 1]`, 0 above 1 and, below
  0, `0.01` where the incoming gradient is negative (descent would raise
  z) and 0 where it is positive: a dead gate can come back to life."""
  return jnp.clip(z, 0.0, 1.0)


def _lower_fwd(z):
  return jnp.clip(z, 0.0, 1.0), z


def _lower_bwd(z, g):
  inside = (z > 0) & (z <= 1)
  revive = (z <= 0) & (g < 0)
  return (jnp.where(inside, g, jnp.where(revive, LEAK * g, 0.0)),)


lower_leaky_hard_sigmoid.defvjp(_lower_fwd, _lower_bwd)


def upper_leaky_hard_sigmoid(z: Array) -> Array:
  """`0` below 0, `z` on `[0, 1]`, `1 + 0.01 (z − 1)` above 1."""
  return jnp.where(z > 1, 1 + LEAK * (z - 1), jnp.where(z > 0, z, 0.0))


# -- parameters ----------------------------------------------------------------


def init_params(key: Array, target: Target, plan: Plan,
                n_components: dict[str, int], gate_hidden: int,
                s: Any = None) -> SPDParams:
  """Factors as the reference initialises them (normal, std `1/sqrt(o)`
  for `u` and `1/sqrt(C_l)` for `v`) and the causal-importance function
  of `s.ci_fn` (`ci_kinds.init`; without `s`, SPD's scalar MLPs of width
  `gate_hidden`)."""
  U, V = {}, {}
  for j, (name, w) in enumerate(target.weights.items()):
    d_in, d_out = w.shape
    C = n_components[name]
    ku, kv = jax.random.split(jax.random.fold_in(key, j))
    U[name] = jax.random.normal(ku, (C, d_in, 1)) / d_out ** 0.5
    V[name] = jax.random.normal(kv, (C, 1, d_out)) / C ** 0.5
  gate_key = jax.random.fold_in(key, len(target.weights))
  gates = ci_kinds.init(gate_key, s or _SCALAR, input_widths(target, plan),
                        plan.by_label(n_components), gate_hidden)
  return SPDParams(U=U, V=V, gates=gates)


_SCALAR = ci_kinds.CIOptions(ci_fn="scalar")


def input_widths(target: Target, plan: Plan) -> dict[str, int]:
  """`{label: i_k}`, the width of each product's input (in plan order)."""
  out = {}
  for label, leaf, t in zip(plan.labels, plan.leaves, plan.transposed,
                            strict=True):
    d_in, d_out = target.weights[leaf].shape
    out[label] = d_out if t else d_in
  return out


def input_shapes(target: Target, plan: Plan, sample_fn: Any,
                 batch_size: int) -> dict[str, tuple[int, ...]]:
  """`{label: shape of its input [B, 1, ..., i]}` on a batch of `sample_fn`,
  abstractly (each example runs as a batch of one)."""
  x = jax.eval_shape(lambda k: sample_fn(k, batch_size),
                     jax.random.PRNGKey(0))
  shapes = jax.eval_shape(lambda x: target_pass(target, x)[1], x)
  return {k: tuple(v.shape) for k, v in zip(plan.labels, shapes,
                                            strict=True)}


def example_input_shapes(target: Target, plan: Plan, sample_fn: Any
                         ) -> dict[str, tuple[int, ...]]:
  """`{label: shape of its input for one example (1, ..., i)}`, abstractly:
  what `ci_kinds.check_inputs` reads."""
  return {k: v[1:] for k, v in input_shapes(target, plan, sample_fn,
                                            1).items()}


# -- causal importances --------------------------------------------------------


gelu = ci_functions.gelu


def gate_logits(gate: dict[str, Array], h: Array) -> Array:
  """`z_c = w2_c · gelu(w1_c h_c + b1_c) + b2_c` for `h [..., C]`
  (`ci_functions.scalar_mlp`: the backward pass recomputes the hidden
  layer in blocks that stay in cache)."""
  return ci_functions.scalar_mlp(gate, h)


def inner_acts(params: SPDParams, plan: Plan, inputs: Sequence[Array]
               ) -> list[Array]:
  """`h_{k,c} = a_k · u_c` (`u` of the product as used, `vᵀ` for `Wᵀ`):
  per occurrence `[..., C_l]`."""
  out = []
  for a, leaf, t in zip(inputs, plan.leaves, plan.transposed, strict=True):
    u = params.V[leaf][:, 0, :] if t else params.U[leaf][:, :, 0]
    out.append(jnp.einsum("...i,ci->...c", a, u))
  return out


def importances(params: SPDParams, plan: Plan, inputs: Sequence[Array],
                s: Any = None) -> tuple[list[Array], list[Array]]:
  """`(G, G_upper)` per occurrence: the lower-leaky causal importances (for
  masks) and the upper-leaky ones (for the penalty), from `s.ci_fn`'s
  function (default: the scalar MLPs)."""
  s = s or _SCALAR
  by_label = dict(zip(plan.labels, inputs, strict=True))
  out = ci_kinds.logits(s, params.gates, by_label,
                        plan.by_label(params.n_components), inner=lambda: dict(
      zip(plan.labels, inner_acts(params, plan, inputs), strict=True)))
  z = [out[label] for label in plan.labels]
  return ([lower_leaky_hard_sigmoid(v) for v in z],
          [upper_leaky_hard_sigmoid(v) for v in z])


def target_pass(target: Target, x: Array) -> tuple[Any, list[Array]]:
  """`((y, acts), inputs)`: the target's outputs on the batch `x` and the
  input `a_k [B, ..., i]` of each of its factored products."""
  model = factored.Model(target.forward, target.weights, x[0])
  weights = {n: factored.Factored(w, name=n)
             for n, w in target.weights.items()}
  out, inputs = jax.vmap(lambda xb: model(weights, xb)[:2])(x)
  return out, inputs


def causal_importances(params: SPDParams, target: Target, plan: Plan,
                       x: Array, s: Any = None) -> dict[str, Array]:
  """`{occurrence label: G [B, ..., C_l]}` on the batch `x`: `[B, C_l]`,
  or `[B, T, C_l]` where the product's input has positions. (Each example
  runs as a batch of one, `x_b[None]`; that axis of size 1 is dropped.)"""
  inputs = target_pass(target, x)[1]
  G, _ = importances(params, plan, inputs, s)
  return {label: per_example(g) for label, g in zip(plan.labels, G,
                                                    strict=True)}


def per_example(g: Array) -> Array:
  """`g [B, 1, ..., C]` computed by running each example as a batch of one
  as `[B, ..., C]` (that axis of size 1 dropped)."""
  return g[:, 0] if g.ndim > 2 and g.shape[1] == 1 else g


# -- masked passes -------------------------------------------------------------


def masked_forward(target: Target, params: SPDParams, plan: Plan,
                   coefs: Sequence[Array | None], x: Array) -> Any:
  """`f(x_b)` with product k computed as `Σ_c coefs[k]_bc (a u_c) v_cᵀ`, or
  at the target's weights where `coefs[k]` is None: `(y, acts)` per
  example."""
  model = factored.Model(target.forward, target.weights, x[0])
  weights = {n: factored.Factored(w, params.U[n], params.V[n], name=n)
             for n, w in target.weights.items()}
  return jax.vmap(lambda c, xb: model(weights, xb, coefs=c)[0])(
      list(coefs), x)


def stochastic_masks(key: Array, G: Sequence[Array]) -> list[Array]:
  """`m = G + (1 − G) r`, `r ~ U(0, 1)` independently per entry."""
  r = routing.drawn_once(lambda k: [
      jax.random.uniform(kk, g.shape, g.dtype)
      for g, kk in zip(G, jax.random.split(k, len(G)), strict=True)], key)
  return [g + (1 - g) * ri for g, ri in zip(G, r, strict=True)]


def stochastic_recon(target: Target, params: SPDParams, plan: Plan, y: Any,
                     G: Sequence[Array], x: Array, key: Array, recon) -> Array:
  """`D(y, f(x | m))` with every product masked by fresh masks."""
  masks = stochastic_masks(key, G)
  return recon(y, masked_forward(target, params, plan, masks, x)[0])


def layerwise_recon(target: Target, params: SPDParams, plan: Plan, y: Any,
                    G: Sequence[Array], x: Array, key: Array, recon) -> Array:
  """`(1/K) Σ_k D(y, f(x | m_k))`: product k masked, the others at θ*.

  The K passes are one compiled program (unrolled at trace time)."""
  masks = stochastic_masks(key, G)
  n = len(masks)
  return sum(recon(y, masked_forward(
      target, params, plan, [m if j == k else None
                             for j, m in enumerate(masks)], x)[0])
             for k in range(n)) / n


def subset_recon(target: Target, params: SPDParams, plan: Plan, y: Any,
                 G: Sequence[Array], x: Array, key: Array, recon) -> Array:
  """`D(y, f(x | m_R))`, one forward: each example (each position) masks
  a uniform random subset `R` of the products (`routing.subset_routing`),
  the others keep `θ*` (every component and the residual channel
  `W − Σ_c u_c v_cᵀ` at 1); the routed ones have their residual at 0."""
  k_route, k_mask = jax.random.split(key)
  masks = dict(zip(plan.labels, stochastic_masks(k_mask, G), strict=True))
  routes = routing.subset_routing(k_route, G[0].shape[:-1], plan.labels)
  coefs, deltas = routing.routed_coefficients(
      routes, masks, {k: jnp.zeros(m.shape[:-1]) for k, m in masks.items()})
  return recon(y, masked_forward(target, params, plan, [
      jnp.concatenate([coefs[k], deltas[k][..., None]], -1)
      for k in plan.labels], x)[0])


def importance_minimality(G_upper: Sequence[Array], p: float | Array
                          ) -> Array:
  """`Σ_k Σ_c mean_b (G_upper[k]_bc + 1e-12)^p` (positions count as
  examples)."""
  total = 0.0
  for g in G_upper:
    per = jnp.power(g + EPS, p).reshape(-1, g.shape[-1])
    total = total + jnp.sum(jnp.mean(per, axis=0))
  return total


def annealed_p(s: Any, p: float | Array, progress: Array | None):
  """`p` moved linearly to `s.importance_p_final` between the fractions
  `s.p_anneal_start` and `s.p_anneal_end` of training (if set)."""
  if s.importance_p_final is None or progress is None:
    return p
  span = max(s.p_anneal_end - s.p_anneal_start, 1e-9)
  t = jnp.clip((progress - s.p_anneal_start) / span, 0.0, 1.0)
  return p + t * (s.importance_p_final - p)


def loss_fn(params: SPDParams, x: Array, target: Target, s: Any, plan: Plan,
            key: Array | None = None, hypers: Hypers | None = None,
            progress: Array | None = None) -> tuple[Array, dict]:
  """`(L, metrics)` for one batch `x`; differentiable in `params`.

  Args:
    params: the factors and gates.
    x: the batch `[B, ...]`.
    target: the target.
    s: the `spd.SPD` method (its options).
    plan: the target's products (`make_plan`).
    key: draws the masks' uniform noise (required).
    hypers: if given, overrides the numeric options of `s`.
    progress: the fraction of training done (for p annealing).
  """
  if key is None:
    raise ValueError("SPD's loss needs a key for its stochastic masks")
  h = s.hypers() if hypers is None else hypers
  recon = losses.kl if s.recon == "kl" else losses.mse
  faith = losses.faithfulness(target.weights,
                              comp_lib.summed_from_factors(params))
  (y, _), inputs = jax.lax.stop_gradient(target_pass(target, x))
  G, G_upper = importances(params, plan, inputs, s)
  k_stoch, k_layer = jax.random.split(key)
  terms = dict(faithfulness=faith)
  if s.stochastic_coeff:
    terms["stochastic"] = stochastic_recon(target, params, plan, y, G, x,
                                           k_stoch, recon)
  if s.layerwise_coeff:
    layer = (subset_recon if s.layerwise_routing == "subset"
             else layerwise_recon)
    terms["layerwise"] = layer(target, params, plan, y, G, x, k_layer, recon)
  p = annealed_p(s, h.importance_p, progress)
  terms["importance"] = importance_minimality(G_upper, p)
  coeffs = dict(faithfulness=h.faithfulness_coeff,
                stochastic=h.stochastic_coeff,
                layerwise=h.layerwise_coeff,
                importance=h.importance_coeff)
  total = sum(coeffs[k] * v for k, v in terms.items())
  l0 = {f"l0/{label}": jnp.mean(jnp.sum(g > s.threshold, axis=-1))
        for label, g in zip(plan.labels, G, strict=True)}
  metrics = dict(terms, loss=total, l0=sum(l0.values()), **l0)
  return total, metrics
