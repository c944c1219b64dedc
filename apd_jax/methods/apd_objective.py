"""The weighted APD objective: the only place that holds loss coefficients.

.. math::  L = c_{faith} L_{faith} + c_{min} L_{min} + c_{act} L_{act}
              + c_{simp} L_{simp}

One call computes, for a batch: per-example attributions (vmapped; their
pass at θ* also gives the target's outputs), the top-k mask (no gradient),
the masked forward pass (vmapped, in factored form) and every loss term.
In the factored form no `[C, i, o]` component weights are formed on the
gradient path.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from apd_jax.core import attribution
from apd_jax.core import components as comp_lib
from apd_jax.core import losses
from apd_jax.core import masking
from apd_jax.core.target import Target
from apd_jax.core.target import upcast
from apd_jax.fast import attribute as fast_attribute
from apd_jax.fast import factored

Array = jax.Array

ATTRIBUTIONS = ("gradient", "ablation", "activation")
POINTS = ("target", "components")
RECONS = ("mse", "kl")
SPARSITIES = ("topk", "lp")


@dataclasses.dataclass(frozen=True)
class Plan:
  """How the library computes the objective: derived from an `APD` and the
  target for speed (`APD.plan`), never chosen by the user; the result does
  not depend on it (up to float rounding) except through
  `attribution_projections`, the user's estimate."""
  # run the target in factored form (False: with [C, i, o] component
  # weights, which costs less overhead when the decomposed layers are tiny)
  factored: bool = True
  # 'forward' or 'reverse' autodiff, or 'lazy': forward mode with tangents
  # kept as per-example coefficients × shared bases (factored form only)
  attribution_mode: str = "forward"
  # reverse mode: per factored product, 'direct' or 'cotangent' contraction
  attribution_contract: str | tuple[str, ...] = "direct"
  # > 0: gradient attributions estimated from this many random projections
  # of the outputs (the APD option, or 0 where exact ones cost no more)
  attribution_projections: int = 0
  # the factored masked pass computes only the kept (example, component)
  # pairs of the top-k mask, where that is cheaper than the dense form
  sparse_masked: bool = True


class Hypers(NamedTuple):
  """The numeric hyperparameters that may differ between the runs of a sweep.

  Given to `loss_fn` (and the train step) as traced scalars, they replace the
  method options of the same names, so runs that differ only in these
  values share one compiled program. A traced `topk` must not exceed the
  method's `topk`, which bounds it statically. `lr_scale` multiplies the
  optimizer's updates (Adam's update is proportional to its learning rate).
  """
  topk: float | Array
  faithfulness_coeff: float | Array
  minimality_coeff: float | Array
  simplicity_coeff: float | Array
  hidden_act_coeff: float | Array
  schatten_p: float | Array
  lr_scale: float | Array = 1.0


def attributions(target: Target, m: Any, plan: Plan,
                 comps: comp_lib.Components, x: Array,
                 key: Array | None = None
                 ) -> tuple[Array, Array, dict[str, Array]]:
  """`(A² [B, C], y, acts)`: attributions and the target's outputs on `x`
  (`A² [B, T, C]` with `per_position`: those of each position's outputs).

  Gradient attributions run the target in factored form (`factored.py`);
  at θ* that same pass yields the target's outputs, which are reused. With
  `factored=False`, or a target that uses a decomposed leaf other than in a
  matrix product, they use the component weights (`attribution.gradient`).
  The factors enter in the target's dtype (`in_target_dtype`), and so
  does a floating `x` narrower than it; `A²` comes back in float32 or
  wider.
  """
  comps = in_target_dtype(target, comps)
  x = upcast(x, jnp.result_type(*target.weights.values()))
  attr, y, acts = _attributions(target, m, plan, comps, x, key)
  return upcast(attr, jnp.float32), y, acts


def _attributions(target, m, plan, comps, x, key):
  """`attributions` with factors already in the target's dtype."""
  at_target = m.attribution_point == "target"
  model = factored.Model(target.forward, target.weights, x[0])
  if (m.attribution_type == "gradient" and plan.factored
      and not model.materialised):
    base = target.weights if at_target else comp_lib.summed_from_factors(comps)
    if plan.attribution_projections and key is None:
      raise ValueError("attribution_projections needs a key")
    attr, (y, acts) = jax.vmap(lambda xb: fast_attribute.attributions(
        model, base, comps.U, comps.V, xb, mode=plan.attribution_mode,
        contract=plan.attribution_contract,
        projections=plan.attribution_projections, key=key,
        keep=int(m.per_position)))(x)
    if at_target:
      return attr, y, acts
    y, acts = target.batch(x)
    return attr, y, acts
  if m.per_position:
    raise ValueError(
        f"per_position=True needs gradient attributions in factored form "
        f"and every decomposed leaf used in matrix products a @ W; "
        f"{model.describe_other_uses() or 'factored=False'}")
  y, acts = target.batch(x)
  P = comp_lib.component_weights(comps)
  if m.attribution_type == "gradient":  # dense form, or a non-product use
    base = target.weights if at_target else comp_lib.summed_weights(P)
    mode = "reverse" if plan.attribution_mode == "reverse" else "forward"
    attr = jax.vmap(lambda xb: attribution.gradient(
        target.output, base, P, xb, mode=mode))(x)
  elif m.attribution_type == "ablation":
    attr = jax.vmap(lambda xb: attribution.ablation(target.output, P, xb))(x)
  else:
    inputs = {n: acts[n] for n in P}
    attr = jax.vmap(attribution.activation, in_axes=(0, None))(inputs, P)
  return attr, y, acts


def masked_forward(target: Target, comps: comp_lib.Components, mask: Array,
                   x: Array, factored_form: bool = True,
                   capacity: int | None = None
                   ) -> tuple[Array, dict[str, Array]]:
  """`f(x_b; W(s_b))` for every example b, each with its own mask: in
  factored form `a W(s) = Σ_c s_c (a U_c) V_c`, or with per-example
  weights `W(s_b) = Σ_c s_bc P_c` (cheaper for tiny layers). In factored
  form, `capacity` (a bound on the mask's nonzero entries) makes each
  product skip the switched-off components (`sparse.py`); a mask
  `[B, T, C]` (per position) masks each product's row t by `mask[b, t]`."""
  comps = in_target_dtype(target, comps)
  if not factored_form:
    P = comp_lib.component_weights(comps)
    return jax.vmap(lambda m, xb: target.forward(
        comp_lib.masked_weights(P, m), xb))(mask, x)
  model = factored.Model(target.forward, target.weights, x[0])
  return jax.vmap(lambda m, xb: model.masked(comps.U, comps.V, m, xb,
                                             capacity))(mask, x)


def in_target_dtype(target: Target, comps: comp_lib.Components
                    ) -> comp_lib.Components:
  """The factors in their leaf's dtype, as they enter the target's passes:
  unchanged beside float32 weights; beside weights kept in bfloat16
  (`Training(compute_dtype=None)`) cast down, the gradients reaching the
  float32 factors through the cast."""
  dtypes = {n: w.dtype for n, w in target.weights.items()}
  return comps.replace(
      U={n: u.astype(dtypes.get(n, u.dtype)) for n, u in comps.U.items()},
      V={n: v.astype(dtypes.get(n, v.dtype)) for n, v in comps.V.items()})


def mask_capacity(m: Any, plan: Plan, batch_size: int, n_components: int
                  ) -> int | None:
  """The most nonzero entries a top-k mask has, if the sparse masked pass
  pays off (it keeps at most a quarter of the `B·C` entries), else None."""
  if not (plan.sparse_masked and plan.factored and m.sparsity == "topk"
          and not m.per_position):
    return None
  if m.batch_topk:
    k = masking.batch_topk_count(m.topk, batch_size)
  else:
    k = batch_size * int(m.topk)
  return k if 4 * k <= batch_size * n_components else None


def select_acts(acts: dict[str, Array], pattern: str) -> dict[str, Array]:
  return {k: v for k, v in acts.items() if re.search(pattern, k)}


def loss_fn(comps: comp_lib.Components, x: Array, target: Target, s: Any,
            plan: Plan, key: Array | None = None,
            hypers: Hypers | None = None
            ) -> tuple[Array, dict[str, Array]]:
  """`(L, metrics)` for one batch `x`; differentiable in `comps`.

  Args:
    comps: the factors.
    x: the batch `[B, ...]`.
    target: the target.
    s: the `apd.APD` method (its options).
    plan: how to compute it (`Plan`).
    key: draws the random projections of `plan.attribution_projections`.
    hypers: if given, overrides the numeric options of `s` (see `Hypers`).
  """
  h = s.hypers() if hypers is None else hypers
  n_params = comp_lib.n_parameters(comps)
  faith = losses.faithfulness(target.weights,
                              comp_lib.summed_from_factors(comps))
  attr, target_out, target_acts = attributions(target, s, plan, comps, x,
                                               key)
  # Every loss term in float32 (or wider), whatever the target's dtype.
  target_out, target_acts = jax.lax.stop_gradient(
      upcast((target_out, target_acts), jnp.float32))
  terms = {"faithfulness": faith}
  if s.sparsity == "topk":
    attr = jax.lax.stop_gradient(attr)
    mask = masking.make_mask(attr, h.topk, batch_topk=s.batch_topk,
                             k_max=s.topk)
    capacity = mask_capacity(s, plan, mask.shape[0], mask.shape[-1])
    out, acts = upcast(masked_forward(target, comps, mask, x, plan.factored,
                                      capacity), jnp.float32)
    recon = losses.kl if s.recon == "kl" else losses.mse
    terms["minimality"] = recon(target_out, out)
    if s.hidden_act_coeff:
      terms["hidden_act"] = losses.hidden_activations(
          select_acts(target_acts, s.hidden_acts),
          select_acts(acts, s.hidden_acts))
    weights = mask
  else:
    d_out = target_out[0][0].size if s.per_position else target_out[0].size
    terms["minimality"] = losses.lp_sparsity(attr, d_out, s.lp_p)
    weights = losses.lp_weights(attr, d_out, s.lp_p)
    mask = (attr > 0).astype(attr.dtype)
  terms["simplicity"] = losses.simplicity(
      comps.U, comps.V, weights.reshape(-1, weights.shape[-1]),
      h.schatten_p, n_params)
  coeffs = {"faithfulness": h.faithfulness_coeff,
            "minimality": h.minimality_coeff,
            "hidden_act": h.hidden_act_coeff,
            "simplicity": h.simplicity_coeff}
  total = sum(coeffs[k] * v for k, v in terms.items())
  metrics = dict(terms, loss=total, l0=jnp.mean(jnp.sum(mask, axis=-1)))
  return total, metrics


# -- the plan: the cheapest way to attribute ----------------------------------


def cheapest_plan(method: Any, plan: Plan, target: Target,
                  sample_fn: Any, batch_size: int, comps: Any) -> Plan:
  """Lazy, forward or reverse mode, and in reverse mode each factored
  product's contraction, whichever costs fewest flops. A way that fails to
  compile is logged (absl) and not chosen.

  Raises:
    ValueError: if no way compiles, naming each one's error.
  """
  x = jax.eval_shape(lambda k: sample_fn(k, batch_size),
                     jax.random.PRNGKey(0))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          comps)
  x0 = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
  n = len(factored.Model(target.forward, target.weights, x0).occurrences)
  failures: dict[str, Exception] = {}
  tried = []

  def cost(mode, contract, base=plan):
    """The flops of that way; None if it fails to compile."""
    p = dataclasses.replace(base, attribution_mode=mode,
                            attribution_contract=contract)
    label = f"{mode} mode" + (f" (contractions {', '.join(contract)})"
                              if mode == "reverse" else "")
    tried.append(label)
    flops = attribution.try_flops(
        label, failures, lambda c, xb: attributions(
            target, method, p, c, xb, jax.random.PRNGKey(0))[0],
        abstract, x)
    return None if label in failures else flops

  contract = ("direct",) * n
  best = cost("reverse", contract)
  for k in range(n):
    trial = contract[:k] + ("cotangent",) + contract[k + 1:]
    trial_cost = cost("reverse", trial)
    if trial_cost is not None and (best is None or trial_cost < best):
      contract, best = trial, trial_cost
  # Exact forward-mode attributions win ties, and win over an estimate from
  # projections when they cost no more.
  exact = dataclasses.replace(plan, attribution_projections=0)
  lazy = plan.factored and all_matrices(target) and not method.per_position
  for mode in (("lazy", "forward") if lazy else ("forward",)):
    c = cost(mode, contract, exact)
    if c is not None and (best is None or c <= best):
      return dataclasses.replace(exact, attribution_mode=mode)
  attribution.check_some_work(failures, len(tried))
  return dataclasses.replace(plan, attribution_mode="reverse",
                             attribution_contract=contract)


def all_matrices(target: Target) -> bool:
  """Whether every decomposed leaf is stored 2-D (the lazy mode needs it)."""
  return all(len(s) == 2 for s in target.shapes.values())


class ProjectState(NamedTuple):
  """No state."""


def project_out_parallel() -> optax.GradientTransformation:
  """Removes from each `U[l][c, :, m]` gradient its part parallel to that
  (unit) column, `g ← g − (g·u) u`, so the update keeps U's columns on the
  unit sphere to first order (`project` renormalises them before each
  forward pass)."""

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("project_out_parallel needs params")

    def proj(g, u):
      u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
      return g - jnp.sum(g * u, axis=1, keepdims=True) * u

    U = jax.tree.map(proj, updates.U, params.U)
    return updates.replace(U=U), state

  return optax.GradientTransformation(lambda _: ProjectState(), update)
