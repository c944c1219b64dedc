"""The VPD objective (adversarial parameter decomposition), one step.

.. math::  L = c_f L_{faith} + c_{imp} activity + c_{freq} freq
              + c_{stoch} L_{subset} + c_{adv} L_{ppgd}

SPD's objects (rank-one subcomponents per decomposed matrix, causal
importances per product, masks `m = ci + (1 − ci) r` between them and 1)
with VPD's terms:

- `L_faith = mean_l ‖W_l − Σ_c u_c v_cᵀ‖² / ‖W_l‖²` (per matrix,
  normalised);
- a Δ channel per product (`Δ = W − Σ_c u_c v_cᵀ`, masked by its source
  as is), so that every coefficient at 1 is the target exactly;
- `L_subset`: one forward in which each example masks a uniform random
  subset of the products (`routing.subset_routing`; the others keep their
  weights) with uniform sources;
- `L_ppgd`: every product masked with persistent adversarial sources, kept
  in the method's state with their own Adam (`adversarial`): `n_warmup`
  ascents with the decomposition held fixed, then the main loss with the
  sources as leaves, then one more ascent from that same backward pass;
- or, `merged`, the two in one forward (the VPD authors' toy recipe):
  each example is adversarial (persistent sources, every product masked)
  with probability `c_adv / (c_stoch + c_adv)`, else stochastic, and the
  term `L_merged` is weighted `c_stoch + c_adv` (in expectation the two
  terms, at half the forwards);
- importance minimality as smooth-L0 frequencies per product
  (`minimality`), `γ` annealed from 1 to 0.01 over training, the
  frequency term optionally at a debiased moving average of them;
- causal importances from whole input vectors (`ci_kinds`: an MLP per
  product, one over all, or for inputs with positions a transformer),
  squashed by SPD's two leaky hard sigmoids;
- the factors start from SPD's initialisation fitted to the weights by a
  few hundred Adam steps on the faithfulness alone; the CI function's
  learning rate is a multiple of the factors'.

Products are SPD's occurrences (`spd_objective.Plan`): a leaf used twice
(TMS's `W` and `Wᵀ`) shares its factors, each use has its own importances
and sources.
"""

from __future__ import annotations

import math
from typing import Any
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from apd_jax.core import components as comp_lib
from apd_jax.core import losses
from apd_jax.core.target import Target
from apd_jax.methods import adversarial
from apd_jax.methods import ci_kinds
from apd_jax.methods import minimality
from apd_jax.methods import routing
from apd_jax.methods import spd_objective as spd

Array = jax.Array
Plan = spd.Plan
sg = jax.lax.stop_gradient


@flax.struct.dataclass
class VPDParams(spd.Factors):
  """What VPD trains: rank-one factors per decomposed leaf and the
  causal-importance function's parameters (`ci_kinds`)."""
  U: dict[str, Array]                  # leaf -> [C_l, i, 1]
  V: dict[str, Array]                  # leaf -> [C_l, 1, o]
  ci: dict[str, Any]                   # the CI function's layers


VPDState = dict   # {'sources': SourceState[, 'freq_ema': FrequencyEMA]}


def make_state(sources: adversarial.SourceState,
               freq_ema: minimality.FrequencyEMA | None = None) -> VPDState:
  """VPD's state beside its parameters: the persistent sources (`[C+1]`
  per product shared by the batch, or `[B, C+1]` one set per example)
  with their Adam moments, and the frequencies' moving average where the
  frequency term uses one. A dict
  with no entry for what is not used, so that such a state is laid out,
  and checkpointed, the same whatever options exist."""
  state = {"sources": sources}
  if freq_ema is not None:
    state["freq_ema"] = freq_ema
  return state


class Hypers(NamedTuple):
  """VPD's numeric options that may differ between a sweep's runs."""
  faithfulness_coeff: float | Array
  importance_coeff: float | Array
  frequency_coeff: float | Array
  stochastic_coeff: float | Array
  adversarial_coeff: float | Array
  ci_lr_scale: float | Array = 1.0
  lr_scale: float | Array = 1.0


def faithfulness(weights: dict[str, Array], params: Any) -> Array:
  """`mean_l ‖W_l − Σ_c U_c V_c‖²_F / ‖W_l‖²_F` (`weights`: the target's
  matrices)."""
  P = comp_lib.summed_from_factors(params)
  return jnp.mean(jnp.stack([
      jnp.sum((w - P[n]) ** 2) / jnp.sum(w ** 2)
      for n, w in weights.items()]))


def product_inputs(target: Target, plan: Plan, x: Array) -> tuple[Any, dict]:
  """`(y, {label: a_k [B, ..., i_k]})`: the target's outputs on `x` and
  each product's input (stop-gradient: the clean pass)."""
  (y, _), inputs = sg(spd.target_pass(target, x))
  return y, dict(zip(plan.labels, inputs, strict=True))


def importances(s: Any, params: VPDParams, plan: Plan, inputs: dict
                ) -> tuple[dict[str, Array], dict[str, Array]]:
  """`(lower, upper)`: per product `[B, ..., C]`, the lower-leaky causal
  importances (masks) and the upper-leaky ones (minimality)."""
  z = ci_kinds.logits(s, params.ci, inputs,
                      plan.by_label(params.n_components), inner=lambda: dict(
      zip(plan.labels, spd.inner_acts(params, plan, [
          inputs[k] for k in plan.labels]), strict=True)))
  return ({k: spd.lower_leaky_hard_sigmoid(v) for k, v in z.items()},
          {k: spd.upper_leaky_hard_sigmoid(v) for k, v in z.items()})


def coefficients(ci: dict[str, Array], sources: dict[str, Array],
                 routes: dict[str, Array] | None = None,
                 per_example: bool = False) -> dict[str, Array]:
  """Per product, its `C + 1` coefficients `[m, m_Δ]` from `ci [B, 1, ...,
  C]` and the sources (their scope's shape, `adversarial.scope_shape`:
  shared ones broadcast from the right, `per_example` ones `[B, ..., C+1]`
  along the examples); with `routes`, 1 where not routed."""
  masks, deltas = {}, {}
  for k, g in ci.items():
    r = sources[k][:, None] if per_example else sources[k]
    r = adversarial.expand(r, g.shape[:-1])
    masks[k], deltas[k] = routing.masks_from_sources(g, r)
  if routes is not None:
    masks, deltas = routing.routed_coefficients(routes, masks, deltas)
  return {k: jnp.concatenate([masks[k], deltas[k][..., None]], axis=-1)
          for k in ci}


def masked_recon(target: Target, params: VPDParams, plan: Plan, y: Any,
                 x: Array, coefs: dict[str, Array], recon) -> Array:
  """`D(y, f(x | coefs))`."""
  out = spd.masked_forward(target, params, plan,
                           [coefs[k] for k in plan.labels], x)[0]
  return recon(y, out)


def init_params(key: Array, target: Target, plan: Plan,
                n_components: dict[str, int], s: Any) -> VPDParams:
  """The factors as `s.factor_init` says (`factor_scales`), fitted to the
  weights for `s.faithfulness_warmup_steps` (`warm_up`); the CI function's
  by `ci_kinds`."""
  base = spd.init_params(key, target, plan, n_components, 1)
  d_ins = spd.input_widths(target, plan)
  cs = plan.by_label(n_components)
  ci_key = jax.random.fold_in(key, 7)
  U, V = base.U, base.V
  if s.factor_init == "vpd":
    scales = factor_scales(target, plan, n_components)
    U = {n: u * scales[n][0] for n, u in U.items()}
    V = {n: v * scales[n][1] for n, v in V.items()}
  params = VPDParams(U=U, V=V, ci=ci_kinds.init(
      ci_key, s, d_ins, cs, gate_hidden=s.ci_hidden[0]))
  return warm_up(params, target.weights, s.faithfulness_warmup_steps,
                 s.faithfulness_warmup_lr)


def factor_scales(target: Target, plan: Plan, n_components: dict[str, int]
                  ) -> dict[str, tuple[float, float]]:
  """`{leaf: (a, b)}` taking SPD's factor draws (`u ~ N(0, 1/d_out)`,
  `v ~ N(0, 1/C)` for `w [d_in, d_out]` as stored) to the VPD authors'
  (`a u`, `b v`): the factor that reads the product's input at std
  `1/sqrt(width of that input)`, the one that writes at `1/sqrt(C)`. A
  leaf used several times follows its first use."""
  out = {}
  for leaf, t in zip(plan.leaves, plan.transposed, strict=True):
    if leaf in out:
      continue
    d_in, d_out = target.weights[leaf].shape
    c = n_components[leaf]
    if t:      # read by v (the d_out side), written by u
      out[leaf] = ((d_out / c) ** 0.5, (c / d_out) ** 0.5)
    else:      # read by u (the d_in side)
      out[leaf] = ((d_out / d_in) ** 0.5, 1.0)
  return out


def warm_up(params: VPDParams, weights: dict[str, Array], steps: int,
            lr: float) -> VPDParams:
  """The factors after `steps` Adam steps at rate `lr` on `faithfulness`
  alone (the CI function untouched)."""
  if not steps:
    return params
  opt = optax.adam(lr)
  weights = jax.tree.map(lambda w: w.astype(jnp.float32), weights)

  def step(carry, _):
    uv, opt_state = carry
    grads = jax.grad(lambda uv: faithfulness(
        weights, params.replace(U=uv[0], V=uv[1])))(uv)
    updates, opt_state = opt.update(grads, opt_state, uv)
    return (optax.apply_updates(uv, updates), opt_state), None

  uv = (params.U, params.V)
  (uv, _), _ = jax.lax.scan(step, (uv, opt.init(uv)), None, length=steps)
  return params.replace(U=uv[0], V=uv[1])


def init_state(key: Array, plan: Plan, n_components: dict[str, int],
               s: Any, leads: dict[str, tuple[int, ...]] | None = None
               ) -> VPDState:
  """Uniform sources `[*lead, C+1]` per product (`leads[product]`, its
  scope's shape, `adversarial.scope_shape`; default `()`, one set shared by
  the batch) and zero moments."""
  cs = plan.by_label(n_components)
  leads = {k: tuple((leads or {}).get(k, ())) for k in cs}
  ema = minimality.ema_init(cs) if s.frequency_halflife else None
  return make_state(adversarial.init(key, cs, leads, settings(s)), ema)


def settings(s: Any) -> adversarial.Settings:
  return adversarial.Settings(lr=s.source_lr, b1=s.source_b1,
                              warmup_frac=s.source_warmup_frac)


def update(s: Any, params: VPDParams, opt_state, state: VPDState, x: Array,
           target: Target, plan: Plan, key: Array, hypers: Hypers | None,
           progress: Array | None, optimizer):
  """One VPD step (module docstring): `(params, opt_state, state,
  metrics)`."""
  h = s.hypers() if hypers is None else hypers
  recon = losses.kl if s.recon == "kl" else losses.mse
  t = jnp.asarray(0.0 if progress is None else progress, jnp.float32)
  y, inputs = product_inputs(target, plan, x)
  src = settings(s)
  lr_src = adversarial.learning_rate(t, src)
  each = s.source_scope == "per_example"

  # n_warmup ascents, the decomposition held fixed.
  fixed = sg(params)
  fixed_ci = sg(importances(s, fixed, plan, inputs)[0])
  sources = adversarial.ascend(
      lambda r: masked_recon(target, fixed, plan, y, x,
                             coefficients(fixed_ci, r, per_example=each),
                             recon),
      state["sources"], s.n_warmup, lr=lr_src, settings=src)

  k_route, k_noise = jax.random.split(key)
  k_pick = jax.random.fold_in(key, 3)
  c_recon = h.stochastic_coeff + h.adversarial_coeff
  p_adv = h.adversarial_coeff / jnp.where(c_recon > 0, c_recon, 1.0)
  gamma = minimality.annealed_gamma(t, s.gamma_start, s.gamma_end)

  def total(params, r):
    lower, upper = importances(s, params, plan, inputs)
    batch = next(iter(lower.values())).shape[:-1]
    reference = s.reference_count or math.prod(batch)
    mini = minimality.minimality_terms(upper, gamma, reference)
    freq, ema = mini.freq, state.get("freq_ema")
    if s.frequency_halflife:     # the frequency term at a moving average
      freq, ema = minimality.ema_frequency_penalty(
          mini.f, ema, reference_count=reference,
          decay=minimality.decay_from_halflife(s.frequency_halflife))
    routes = routing.subset_routing(k_route, batch, plan.labels)
    noise = routing.drawn_once(lambda key: {
        k: jax.random.uniform(jax.random.fold_in(key, j),
                              (*batch, g.shape[-1] + 1))
        for j, (k, g) in enumerate(lower.items())}, k_noise)
    stoch = coefficients(lower, noise, routes)
    adv = coefficients(lower, r, per_example=each)
    coeffs = dict(faithfulness=h.faithfulness_coeff,
                  activity=h.importance_coeff,
                  frequency=h.frequency_coeff)
    terms = dict(faithfulness=faithfulness(target.weights, params),
                 activity=mini.activity, frequency=freq)
    if s.merged:     # one forward, each example adversarial or stochastic
      pick = routing.drawn_once(
          lambda k, p: jax.random.bernoulli(k, p, batch[:1]), k_pick, p_adv)
      coefs = {k: jnp.where(pick.reshape(-1, *(1,) * (c.ndim - 1)), adv[k], c)
               for k, c in stoch.items()}
      terms["merged"] = masked_recon(target, params, plan, y, x, coefs, recon)
      coeffs["merged"] = c_recon
    else:
      terms["stochastic"] = masked_recon(target, params, plan, y, x, stoch,
                                         recon)
      terms["adversarial"] = masked_recon(target, params, plan, y, x, adv,
                                          recon)
      coeffs.update(stochastic=h.stochastic_coeff,
                    adversarial=h.adversarial_coeff)
    loss = sum(coeffs[k] * v for k, v in terms.items())
    l0 = {f"l0/{k}": jnp.mean(jnp.sum(g > s.threshold, axis=-1))
          for k, g in lower.items()}
    return loss, (dict(terms, loss=loss, gamma=gamma,
                       l0=sum(l0.values()), **l0), ema)

  (loss, (metrics, ema)), (g_params, g_sources) = jax.value_and_grad(
      total, argnums=(0, 1), has_aux=True)(params, sources.sources)
  # The last ascent from the same backward pass, on the term itself.
  c_adv = c_recon if s.merged else h.adversarial_coeff
  g_sources = jax.tree.map(
      lambda g: jnp.where(c_adv != 0, g / jnp.where(c_adv != 0, c_adv, 1.0),
                          g), g_sources)
  sources = adversarial.apply_ascent(sources, g_sources, lr=lr_src,
                                     settings=src)
  updates, opt_state = optimizer.update(g_params, opt_state, params)
  ci_scale = s.ci_lr_scale if hypers is None else hypers.ci_lr_scale
  if hypers is not None or ci_scale != 1:
    updates = updates.replace(ci=jax.tree.map(lambda u: ci_scale * u,
                                              updates.ci))
  if hypers is not None:
    updates = jax.tree.map(lambda u: hypers.lr_scale * u, updates)
  params = optax.apply_updates(params, updates)
  return params, opt_state, make_state(sources, ema), metrics


def evaluate_batch(s: Any, params: VPDParams, target: Target, plan: Plan,
                   x: Array, key: Array) -> dict:
  """One evaluation batch (float32): the subset-routed reconstruction with
  uniform sources, the reconstruction under fresh sign-PGD sources (shared
  by the batch, every product masked), under `ci` alone (sources 0, Δ
  off), L0s and which subcomponents were active."""
  recon_fn = losses.kl if s.recon == "kl" else losses.mse
  recon = lambda a, b: recon_fn(*jax.tree.map(  # noqa: E731
      lambda v: v.astype(jnp.float32), (a, b)))
  y, inputs = product_inputs(target, plan, x)
  lower, _ = importances(s, params, plan, inputs)
  batch = next(iter(lower.values())).shape[:-1]
  k_route, k_noise, k_pgd = jax.random.split(key, 3)
  routes = routing.subset_routing(k_route, batch, plan.labels)
  noise = {k: jax.random.uniform(jax.random.fold_in(k_noise, j),
                                 (*batch, g.shape[-1] + 1))
           for j, (k, g) in enumerate(lower.items())}
  stoch = masked_recon(target, params, plan, y, x,
                       coefficients(lower, noise, routes), recon)
  start = {k: jax.random.uniform(jax.random.fold_in(k_pgd, j),
                                 (g.shape[-1] + 1,))
           for j, (k, g) in enumerate(lower.items())}
  worst = adversarial.sign_pgd(
      lambda r: masked_recon(target, params, plan, y, x,
                             coefficients(lower, r), recon),
      start, s.eval_pgd_steps, s.eval_pgd_step)
  pgd = masked_recon(target, params, plan, y, x, coefficients(lower, worst),
                     recon)
  zeros = {k: jnp.zeros((g.shape[-1] + 1,)) for k, g in lower.items()}
  ci_only = masked_recon(target, params, plan, y, x,
                         coefficients(lower, zeros), recon)
  active = {k: g > s.threshold for k, g in lower.items()}
  l0 = {f"l0/{k}": jnp.mean(jnp.sum(a, axis=-1)) for k, a in active.items()}
  seen = [jnp.any(active[k].reshape(-1, active[k].shape[-1]), axis=0)
          for k in plan.labels]
  return dict(stochastic_recon=stoch, pgd_recon=pgd, ci_masked_recon=ci_only,
              l0=sum(l0.values()), **l0, seen=seen)
