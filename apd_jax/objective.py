"""The weighted APD objective: the only place that holds loss coefficients.

.. math::  L = c_{faith} L_{faith} + c_{min} L_{min} + c_{act} L_{act}
              + c_{simp} L_{simp}

One call computes, for a batch: the component weights `P`, per-example
attributions (vmapped), the top-k mask (no gradient), the masked forward pass
(vmapped) and every loss term.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp

from apd_jax import attribution
from apd_jax import components as comp_lib
from apd_jax import losses
from apd_jax import masking
from apd_jax.target import Target

Array = jax.Array

ATTRIBUTIONS = ("gradient", "ablation", "activation")
POINTS = ("target", "components")
RECONS = ("mse", "kl")
SPARSITIES = ("topk", "lp")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Hyperparameters of the objective (hashable: safe to close over in jit)."""
  topk: float                      # batch top-k: mean active per example
  batch_topk: bool = True          # False: per-example top-k (integer k)
  faithfulness_coeff: float = 1.0
  minimality_coeff: float = 1.0
  simplicity_coeff: float = 1.0
  hidden_act_coeff: float = 0.0    # > 0 needs apply_fn with has_aux
  hidden_acts: str = ".*"          # regex: which aux activations to match
  schatten_p: float = 1.0
  attribution: str = "gradient"    # one of ATTRIBUTIONS
  attribution_point: str = "target"  # gradient at θ* or at Σ_c P_c
  attribution_mode: str = "forward"  # 'forward' or 'reverse' autodiff
  recon: str = "mse"               # 'mse' or 'kl' (logit outputs)
  sparsity: str = "topk"           # 'topk' or the 'lp' variant
  lp_p: float = 1.0                # p of the L_p variant
  unit_norm_matrices: bool = False


class Hypers(NamedTuple):
  """The numeric hyperparameters that may differ between the runs of a sweep.

  Given to `loss_fn` (and the train step) as traced scalars, they replace the
  `Settings` fields of the same names, so runs that differ only in these
  values share one compiled program. A traced `topk` must not exceed
  `Settings.topk`, which bounds it statically. `lr_scale` multiplies the
  optimizer's updates (Adam's update is proportional to its learning rate).
  """
  topk: float | Array
  faithfulness_coeff: float | Array
  minimality_coeff: float | Array
  simplicity_coeff: float | Array
  hidden_act_coeff: float | Array
  schatten_p: float | Array
  lr_scale: float | Array = 1.0

  @classmethod
  def of(cls, s: Settings) -> Hypers:
    """The values `s` holds (Python floats: top-k stays static)."""
    return cls(**{f: getattr(s, f) for f in cls._fields if f != "lr_scale"})


def attributions(target: Target, s: Settings, P: dict[str, Array],
                 x: Array, target_acts: dict[str, Array]) -> Array:
  """Squared attributions `[B, C]` for the batch `x`."""
  if s.attribution == "gradient":
    base = (target.weights if s.attribution_point == "target"
            else comp_lib.summed_weights(P))
    fn = lambda xb: attribution.gradient(  # noqa: E731
        target.output, base, P, xb, mode=s.attribution_mode)
    return jax.vmap(fn)(x)
  if s.attribution == "ablation":
    return jax.vmap(lambda xb: attribution.ablation(target.output, P, xb))(x)
  inputs = {n: target_acts[n] for n in P}
  return jax.vmap(attribution.activation, in_axes=(0, None))(inputs, P)


def masked_forward(target: Target, P: dict[str, Array], mask: Array,
                   x: Array) -> tuple[Array, dict[str, Array]]:
  """`f(x_b; W(s_b))` for every example b, each with its own mask."""
  fwd = lambda m, xb: target.forward(  # noqa: E731
      comp_lib.masked_weights(P, m), xb)
  return jax.vmap(fwd)(mask, x)


def select_acts(acts: dict[str, Array], pattern: str) -> dict[str, Array]:
  return {k: v for k, v in acts.items() if re.search(pattern, k)}


def loss_fn(comps: comp_lib.Components, x: Array, target: Target,
            s: Settings, hypers: Hypers | None = None
            ) -> tuple[Array, dict[str, Array]]:
  """`(L, metrics)` for one batch `x`; differentiable in `comps`.

  `hypers`, if given, overrides the numeric fields of `s` (see `Hypers`).
  """
  h = Hypers.of(s) if hypers is None else hypers
  P = comp_lib.component_weights(comps)
  n_params = comp_lib.n_parameters(comps)
  target_out, target_acts = target.batch(x)
  target_out = jax.lax.stop_gradient(target_out)
  faith = losses.faithfulness(target.weights, comp_lib.summed_weights(P))
  attr = attributions(target, s, P, x, target_acts)
  terms = {"faithfulness": faith}
  if s.sparsity == "topk":
    attr = jax.lax.stop_gradient(attr)
    mask = masking.make_mask(attr, h.topk, batch_topk=s.batch_topk,
                             k_max=s.topk)
    out, acts = masked_forward(target, P, mask, x)
    recon = losses.kl if s.recon == "kl" else losses.mse
    terms["minimality"] = recon(target_out, out)
    if s.hidden_act_coeff:
      terms["hidden_act"] = losses.hidden_activations(
          select_acts(target_acts, s.hidden_acts),
          select_acts(acts, s.hidden_acts))
    weights = mask
  else:
    d_out = target_out[0].size
    terms["minimality"] = losses.lp_sparsity(attr, d_out, s.lp_p)
    weights = losses.lp_weights(attr, d_out, s.lp_p)
    mask = (attr > 0).astype(attr.dtype)
  terms["simplicity"] = losses.simplicity(
      comps.U, comps.V, weights, h.schatten_p, n_params)
  coeffs = {"faithfulness": h.faithfulness_coeff,
            "minimality": h.minimality_coeff,
            "hidden_act": h.hidden_act_coeff,
            "simplicity": h.simplicity_coeff}
  total = sum(coeffs[k] * v for k, v in terms.items())
  metrics = dict(terms, loss=total, l0=jnp.mean(jnp.sum(mask, axis=-1)))
  return total, metrics
