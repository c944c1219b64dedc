"""`APD`: what Attribution-based Parameter Decomposition optimises.

    method = APD(n_components=5, topk=0.211, rank=3, simplicity_coeff=0.7)
    result = apd_jax.decompose(apply_fn, params, sample_fn, include="W",
                               method=method, training=Training(...))

An `APD` is a frozen, hashable record of the user's choices, checked on
construction. It is also the method's side of the engine (the protocol in
`methods/base.py`): its parameters' initialisation (`init`), the loss of one
batch (`loss`, from `apd_objective.py`), the final metrics (`evaluate`) and
how the library will compute the loss fastest (`plan`: factored form,
attribution mode, contraction; kept apart in an `apd_objective.Plan`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from apd_jax.core import components as comp_lib
from apd_jax.core import losses
from apd_jax.core import masking
from apd_jax.core import metrics as metrics_lib
from apd_jax.core.target import SampleFn
from apd_jax.core.target import Target
from apd_jax.core.target import check as check_target
from apd_jax.core.target import upcast
from apd_jax.fast import factored
from apd_jax.methods import apd_objective as objective
from apd_jax.methods.base import check_choice
from apd_jax.methods.base import check_positive

Array = jax.Array
MODES = ("auto", "forward", "reverse", "lazy")
INITS = ("random", "svd")
FACTORED_MIN_SIZE = 4096   # Σ_l i·o from which the factored form pays off


@dataclasses.dataclass(frozen=True)
class APD:
  """The APD objective and its options (Braun et al. 2025, eqs. 1-6).

  .. math::  L = c_f \\|θ^* - Σ_c P_c\\|^2 / N
              + c_m D(f(x|θ^*), f(x|Σ_{c∈topk} P_c))
              + c_a Σ_l D(h_l, h_l^{topk})
              + c_s Σ_{c∈topk} \\|P_c\\|_p^p

  Attributes (defaults in brackets; the paper's TMS 5-2 value after "paper"):
    n_components: C, the number of components (> 0). Paper: 5 for TMS 5-2,
      50 for 40-10, 130 for the 1-layer residual MLP. Take C somewhat above
      the number of mechanisms you expect; surplus components die.
    topk: batch top-k: the mean number of active components per example
      (a float, int(topk·B) entries of the [B, C] attributions are kept);
      per-example top-k: an integer ≤ C. Paper: 0.211 (TMS 5-2), 1.0
      (40-10), 1.28 (residual MLP). Start near the expected number of
      active mechanisms per input.
    batch_topk: [True] batch top-k; False: per-example top-k.
    rank: m, each component's rank in every decomposed matrix; None
      [default]: full rank min(i, o). Paper: min(i, o) + 1 for TMS. A
      rank above min(i, o) adds no expressiveness and is warned about.
    faithfulness_coeff: c_f [1.0], weight of the faithfulness MSE.
    minimality_coeff: c_m [1.0], weight of the top-k reconstruction
      (or of the L_p penalty with sparsity='lp').
    simplicity_coeff: c_s [1.0], weight of the Schatten-p norm of the active
      components. Paper: 0.7 (TMS 5-2), 20 (40-10), 10 (residual MLP 1).
      Too small leaves dead or duplicated components, too large spreads a
      feature over several.
    hidden_act_coeff: c_a [0.0], weight of the reconstruction of the hidden
      activations matched by `hidden_acts` (needs has_aux). Paper: 1.0 for
      the residual MLPs.
    hidden_acts: [".*"] regex over the names of the returned activations.
    schatten_p: p of the Schatten norm (> 0) [1.0]. Paper: 1.0 (TMS 5-2),
      0.9 (40-10, residual MLPs).
    attribution_type: ['gradient'] (the paper), 'ablation' or 'activation'.
    attribution_point: ['target'] gradients at θ*, or 'components' at Σ P
      (the paper's TMS 5-2 adjustment).
    attribution_mode: ['auto'] the cheapest by XLA's cost analysis, or
      'forward', 'reverse', 'lazy' autodiff (the result is the same).
    attribution_projections: [0] exact attributions; k > 0 estimates them
      during training from k random output projections (unbiased; gradient
      attributions in reverse mode, factored form).
    recon: ['mse'] or 'kl' (logit outputs, classes on the last axis).
    sparsity: ['topk'] the paper's method, or 'lp' (the L_p variant with
      exponent `lp_p` [1.0], weight `minimality_coeff`).
    init: ['random'] Xavier-normal factors with gain `init_gain` [1.0], or
      'svd' (components summing exactly to the target).
    unit_norm_matrices: [False] keep U's columns at unit norm (the
      reference's residual-MLP setting).
    factored: run the target in factored form `Σ_c α_c (a U_c) V_c` (True)
      or with [C, i, o] component weights (False); None [default]: factored
      unless the decomposed leaves hold fewer than 4096 parameters.
    per_position: [False] each position of the output's first axis after
      the batch (a sequence model's logits `[B, T, V]`) is an example for
      top-k: attributions `A²[b, t, c] = Σ_v (∂y_{btv}/∂α_c)²` of the
      outputs at position t, a top-k mask `[B, T, C]` over all B·T
      positions, and in the masked pass every decomposed product at
      position t (its input `[T, i]`) uses position t's mask. Needs exact
      gradient attributions in the factored form.
  """
  n_components: int
  topk: float
  batch_topk: bool = True
  rank: int | None = None
  faithfulness_coeff: float = 1.0
  minimality_coeff: float = 1.0
  simplicity_coeff: float = 1.0
  hidden_act_coeff: float = 0.0
  hidden_acts: str = ".*"
  schatten_p: float = 1.0
  attribution_type: str = "gradient"
  attribution_point: str = "target"
  attribution_mode: str = "auto"
  attribution_projections: int = 0
  recon: str = "mse"
  sparsity: str = "topk"
  lp_p: float = 1.0
  init: str = "random"
  init_gain: float = 1.0
  unit_norm_matrices: bool = False
  factored: bool | None = None
  per_position: bool = False

  # The numeric options a sweep may vary between its runs (traced).
  SWEEPABLE: ClassVar[tuple[str, ...]] = (
      "topk", "faithfulness_coeff", "minimality_coeff", "simplicity_coeff",
      "hidden_act_coeff", "schatten_p")
  # Linear warm-up when `Training.warmup_frac` is None: on TMS 5-2 (paper
  # settings, 10 seeds with their own targets) 0 / 0.01 / 0.05 / 0.1 find
  # every feature on 6 / 8 / 9 / 9 seeds (docs: "Defaults").
  WARMUP_FRAC: ClassVar[float] = 0.05
  NAME: ClassVar[str] = "apd"
  METRICS: ClassVar[tuple[str, ...]] = (
      "faithfulness", "topk_recon", "l0", "dead_components")
  SELECT: ClassVar[tuple[str, str]] = ("topk_recon", "min")
  SCORE: ClassVar[str] = "attribution"
  ACTIVE: ClassVar[str] = "in the top-k mask"
  SCORE_NAME: ClassVar[str] = "attribution"
  EXTRAS: ClassVar[tuple[str, ...]] = ("attributions", "topk_mask")
  PARAMS: ClassVar[type] = comp_lib.Components
  PLAN: ClassVar[type] = objective.Plan
  # The command line's values of the required options (TMS 5-2, the paper's)
  # and of the options it sets otherwise.
  CLI_DEFAULTS: ClassVar[dict] = dict(n_components=5, topk=0.211,
                                      simplicity_coeff=0.7,
                                      hidden_acts="post_relu")

  def __post_init__(self):
    check_positive(n_components=self.n_components, topk=self.topk,
                   schatten_p=self.schatten_p)
    if self.rank is not None:
      check_positive(rank=self.rank)
    check_choice("attribution_type", self.attribution_type,
                 objective.ATTRIBUTIONS)
    check_choice("attribution_point", self.attribution_point,
                 objective.POINTS)
    check_choice("attribution_mode", self.attribution_mode, MODES)
    check_choice("recon", self.recon, objective.RECONS)
    check_choice("sparsity", self.sparsity, objective.SPARSITIES)
    check_choice("init", self.init, INITS)
    if self.topk > self.n_components:
      raise ValueError(f"topk={self.topk} is larger than n_components="
                       f"{self.n_components}")
    if not self.batch_topk and self.topk != int(self.topk):
      raise ValueError(f"per-example top-k needs an integer topk <= "
                       f"n_components={self.n_components}, got {self.topk}")
    p = self.attribution_projections
    if p != int(p) or p < 0:
      raise ValueError(f"attribution_projections must be a non-negative "
                       f"integer, got {p!r}")
    if p and (self.attribution_type != "gradient"
              or self.attribution_mode in ("forward", "lazy")):
      raise ValueError("attribution_projections needs attribution_type="
                       "'gradient' and attribution_mode 'auto' or 'reverse'")
    if p and self.factored is False:
      raise ValueError("attribution_projections needs the factored form "
                       "(factored=None or True)")
    if self.per_position and (
        self.attribution_type != "gradient" or p or self.factored is False
        or self.attribution_mode == "lazy"):
      raise ValueError(
          "per_position=True needs exact gradient attributions in the "
          "factored form: attribution_type='gradient', "
          "attribution_projections=0, factored None or True and "
          "attribution_mode 'auto', 'forward' or 'reverse'")

  def replace(self, **values) -> APD:
    """A copy with `values` changed (checked again)."""
    return dataclasses.replace(self, **values)

  # -- checks that need the target ------------------------------------------

  def check(self, target: Target, sample_fn: SampleFn, batch_size: int
            ) -> None:
    """Checks the options against the target and the batch size (abstract
    evaluation only; nothing is compiled)."""
    if self.batch_topk and masking.batch_topk_count(self.topk,
                                                    batch_size) < 1:
      raise ValueError(f"batch top-k keeps int(topk*batch_size) = 0 entries "
                       f"(topk={self.topk}, batch_size={batch_size})")
    if self.attribution_mode == "lazy" and not objective.all_matrices(target):
      raise ValueError("attribution_mode='lazy' needs every decomposed leaf "
                       "stored as a matrix; use 'auto', 'forward' or "
                       "'reverse' for leaves of more axes")
    for name, w in target.weights.items():
      if self.rank is not None and self.rank > min(w.shape):
        logging.info(   # a note: the paper's TMS settings do this on purpose
            "note: rank=%d exceeds min(i, o)=%d of %s %s: each P_c = U_c V_c "
            "has rank <= %d all the same (the extra columns only change the "
            "optimisation)", self.rank, min(w.shape), name, w.shape,
            min(w.shape))
    x, out = check_target(target, sample_fn, batch_size)
    acts = out[1] if target.has_aux else {}
    if self.per_position and jnp.ndim(out[0] if target.has_aux else out) < 3:
      raise ValueError("per_position=True needs outputs [B, T, ...] with a "
                       "position axis after the batch")
    if self.per_position:   # its attributions run in factored form
      model = factored.Model(target.forward, target.weights,
                             jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
      if model.materialised:
        raise ValueError(
            f"per_position=True needs every decomposed leaf used in matrix "
            f"products a @ W (leave the others out of include); "
            f"{model.describe_other_uses()}")
    if self.attribution_type == "activation":
      missing = [n for n in target.names if n not in acts]
      if missing:
        raise ValueError(
            f"attribution_type='activation' needs apply_fn (has_aux=True) "
            f"to return each decomposed leaf's input; missing {missing}")
    if self.hidden_act_coeff and not objective.select_acts(
        acts, self.hidden_acts):
      raise ValueError(
          f"hidden_act_coeff={self.hidden_act_coeff} needs has_aux=True and "
          f"activations matching hidden_acts={self.hidden_acts!r}; got "
          f"{sorted(acts)}")

  # -- the engine's protocol ------------------------------------------------

  def ranks(self, target: Target) -> dict[str, int]:
    return {n: self.rank or comp_lib.default_rank(w.shape)
            for n, w in target.weights.items()}

  @property
  def init_traceable(self) -> bool:
    """Whether `init_params` can run under `jit` (drawn directly into
    shards); the SVD needs concrete singular values."""
    return self.init != "svd"

  def init_params(self, key: Array, target: Target, sample_fn: Any = None
                  ) -> comp_lib.Components:
    """The initial factors `{U [C, i, m], V [C, m, o]}` of every leaf, in
    float32 (or wider) whatever the target's dtype (`sample_fn` is not
    needed)."""
    ranks = self.ranks(target)
    if self.init == "svd":
      comps = comp_lib.init_svd(key, upcast(target.weights, jnp.float32),
                                n_components=self.n_components, rank=ranks)
    else:
      shapes = {n: tuple(w.shape) for n, w in target.weights.items()}
      comps = comp_lib.init_random(key, shapes,
                                   n_components=self.n_components,
                                   rank=ranks, gain=self.init_gain)
    return self.project(comps)

  def project(self, comps: comp_lib.Components) -> comp_lib.Components:
    """The factors as the loss sees them (unit-norm U columns if asked)."""
    return comp_lib.normalize_u(comps) if self.unit_norm_matrices else comps

  def gradient_transform(self):
    """An optax transform to run before the optimiser, or None."""
    if not self.unit_norm_matrices:
      return None
    return objective.project_out_parallel()

  def hypers(self, **values) -> objective.Hypers:
    """The traced numeric options (`values` override this object's)."""
    return objective.Hypers(**{n: values.get(n, getattr(self, n))
                               for n in self.SWEEPABLE})

  def bound(self, runs: list[dict[str, Any]]) -> APD:
    """The static method of a sweep over `runs`: top-k at the runs' largest
    (it bounds the traced top-k) and the hidden-activation term on if any
    run uses it."""
    topk = max(r.get("topk", self.topk) for r in runs)
    hidden = max([abs(r.get("hidden_act_coeff", 0.0)) for r in runs]
                 + [self.hidden_act_coeff])
    return self.replace(topk=topk, hidden_act_coeff=hidden)

  def plan(self, target: Target, sample_fn: SampleFn, batch_size: int,
           comps: Any) -> objective.Plan:
    """How to compute the loss fastest: factored form or not, and (for
    gradient attributions with mode 'auto') the attribution mode and each
    factored product's contraction, by XLA's cost analysis."""
    size = sum(w.size for w in target.weights.values())
    form = (size >= FACTORED_MIN_SIZE or bool(self.attribution_projections)
            or self.per_position
            if self.factored is None else bool(self.factored))
    mode = "forward" if self.attribution_mode == "auto" else (
        self.attribution_mode)
    plan = objective.Plan(
        factored=form, attribution_mode=mode,
        attribution_projections=int(self.attribution_projections))
    if self.attribution_mode == "auto" and self.attribution_type == "gradient":
      plan = objective.cheapest_plan(self, plan, target, sample_fn,
                                     batch_size, comps)
    return plan

  def loss(self, comps, x, target, plan, key=None, hypers=None,
           progress=None):
    """`(L, metrics)` of one batch (`apd_objective.loss_fn`; `progress`, the
    fraction of training done, is not used)."""
    return objective.loss_fn(comps, x, target, self, plan, key, hypers)

  def evaluate(self, result, sample_fn: SampleFn, key: Array, *,
               batch_size: int, n_batches: int) -> dict[str, Any]:
    """Faithfulness, top-k reconstruction, L0 (mean active components per
    example) and the dead components (in no top-k mask) over `n_batches`
    fresh batches, with training's batch masks; with batch top-k also the
    threshold `topk_mask`'s per-example rule uses (`topk_threshold`). All
    computed in float32 (or wider), whatever the target's dtype."""
    P = result.component_weights
    faith = float(losses.faithfulness(
        upcast(result.target.weights, jnp.float32),
        comp_lib.summed_weights(P)))
    recon_fn = losses.kl if self.recon == "kl" else losses.mse
    recon, l0s, masks, taus = [], [], [], []
    for i in range(n_batches):
      x = sample_fn(jax.random.fold_in(key, i), batch_size)
      A = self.attributions(result, x)
      mask = masking.make_mask(A, self.topk, batch_topk=self.batch_topk)
      if self.batch_topk:
        taus.append(float(masking.batch_topk_threshold(A, self.topk)))
      y, out = upcast((result.target.batch(x)[0], result.apply(x, mask)),
                      jnp.float32)
      recon.append(float(recon_fn(y, out)))
      mask = mask.reshape(-1, mask.shape[-1])        # per position: [B·T, C]
      l0s.append(float(metrics_lib.l0(mask)))
      masks.append(jnp.any(mask > 0, axis=0))
    dead = metrics_lib.dead_components(jnp.stack(masks))
    out = dict(faithfulness=faith, topk_recon=float(np.mean(recon)),
               l0=float(np.mean(l0s)), dead_components=len(dead),
               dead_component_ids=[int(c) for c in dead])
    if taus:   # the per-example rule of `topk_mask` (median over batches)
      out["topk_threshold"] = float(np.median(taus))
    return out

  def check_runs(self, runs: list[dict[str, Any]], batch_size: int) -> None:
    """Checks each sweep run's values as `__post_init__` and `check` would."""
    for run in runs:
      m = self.replace(**{k: v for k, v in run.items()
                          if k in self.SWEEPABLE})
      if m.batch_topk:
        if masking.batch_topk_count(m.topk, batch_size) < 1:
          raise ValueError(f"batch top-k keeps int(topk*batch_size) = 0 "
                           f"entries (topk={m.topk})")
        count = int(np.float32(m.topk) * np.float32(batch_size))
        if count != int(m.topk * batch_size):
          raise ValueError(
              f"topk={m.topk}: int(topk*batch_size) differs in float32 "
              f"({count}); choose a topk away from a multiple of "
              f"1/batch_size")


  # -- what analyses and export ask (`base.Method`) ---------------------------

  def groups(self, result) -> dict[str, tuple[str, ...]]:
    """One group, `''`: every component spans every decomposed leaf."""
    return {"": tuple(result.target.names)}

  def scores(self, result, x) -> dict[str, Array]:
    """`{'': A² [B, (T,) C]}`: exact squared attributions on the batch."""
    return {"": self.attributions(result, x)}

  def masks(self, result, x, batch: bool = False) -> dict[str, Array]:
    """`{'': [B, (T,) C]}`, `topk_mask`'s."""
    return {"": self.topk_mask(result, x, batch=batch)}

  def active(self, result, x, batch: bool = False) -> dict[str, Array]:
    """`{'': bool [B, (T,) C]}`: in `topk_mask`."""
    return {"": self.topk_mask(result, x, batch=batch) > 0}

  def masked_apply(self, result, mask, x) -> Array:
    """The target's output with weights `Σ_c mask_bc P_c` per example;
    `mask`: `{'': [B, (T,) C]}` or the array itself."""
    if isinstance(mask, dict):
      if set(mask) != {""}:
        raise ValueError(f"an APD mask is {{'': [B, C]}} or a [B, C] "
                         f"array; got the groups {sorted(mask)}")
      mask = mask[""]
    return _masked_apply(result.target, result.plan.factored,
                         result.components, mask, x)

  # -- its own analyses, as `result.<name>(x)` (EXTRAS) --------------------

  def attributions(self, result, x: Array) -> Array:
    """Squared attributions `[B, C]` of the batch `x` (`[B, T, C]` per
    position; exact, also where training estimated them from random
    projections)."""
    exact = dataclasses.replace(result.plan, attribution_projections=0)
    return _attributions(result.target, self, exact, result.components, x)

  def topk_mask(self, result, x: Array, batch: bool = False) -> Array:
    """The top-k mask `[B, C]` (`[B, T, C]` per position) of the batch `x`.

    Per example by default: with batch top-k, `A² ≥ τ`, τ the threshold
    batch top-k had on the evaluation batches (`metrics['topk_threshold']`,
    so that on the training distribution each example keeps `topk`
    components on average), and each example's mask independent of the
    rest of `x`. `batch=True`: the mask training takes of this batch, whose
    entries depend on the whole batch (`int(topk·B)` kept). Per-example
    top-k (`batch_topk=False`) is the same either way.
    """
    A = self.attributions(result, x)
    if batch or not self.batch_topk:
      return masking.make_mask(A, self.topk, batch_topk=self.batch_topk)
    tau = result.metrics.get("topk_threshold")
    if tau is None:
      raise ValueError("this decomposition has no calibrated top-k "
                       "threshold (metrics['topk_threshold'], set by its "
                       "final evaluation); use topk_mask(x, batch=True)")
    return masking.threshold_mask(A, tau)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _attributions(target, method, plan, comps, x):
  return objective.attributions(target, method, plan, comps, x)[0]


@functools.partial(jax.jit, static_argnums=1)
def _masked_apply(target, factored_form, comps, mask, x):
  return objective.masked_forward(target, comps, mask, x, factored_form)[0]
