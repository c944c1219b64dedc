"""`VPD`: adversarial parameter decomposition, the method the field now uses.

    method = VPD(n_components=20)
    result = apd_jax.decompose(apply_fn, params, sample_fn, include="W",
                               method=method, training=Training(...))
    result.causal_importances(x)      # {product: [B, C_l]}

VPD keeps SPD's objects and trains the masks against persistent adversarial
sources, with subset routing, a Δ channel and smooth-L0 frequency
minimality (`vpd_objective.py`). Its sources and their moments are state
beside its parameters (`TrainState.method_state`): checkpointed, resumed
and swept with the rest. The object is the method's side of the engine
(`methods/base.py`).

A leaf used twice shares its factors between its uses (each use has its
own importances and sources); to decompose the uses apart, as the VPD
authors do TMS's `W` and `Wᵀ`, give each its own leaf (`targets/tms.py`'s
`untied`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from typing import ClassVar
from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from apd_jax.core.target import SampleFn
from apd_jax.core.target import Target
from apd_jax.core.target import check as check_target
from apd_jax.core.target import upcast
from apd_jax.methods import adversarial
from apd_jax.methods import ci_kinds
from apd_jax.methods import spd_objective
from apd_jax.methods import vpd_objective as objective
from apd_jax.methods.base import check_choice
from apd_jax.methods.base import check_positive
from apd_jax.methods.spd import SPD
from apd_jax.methods.spd import PerProduct

Array = jax.Array
CI_FNS = ("layerwise", "global", "transformer", "scalar")
SOURCE_SCOPES = ("shared", "per_example")
FACTOR_INITS = ("spd", "vpd")
# The VPD authors' options shared by their toy decompositions (TMS, the
# residual MLPs), `config.method.update(TOY_RECIPE)`; with Adam on a cosine
# to 0.1x, no warm-up (`Training`).
TOY_RECIPE = dict(merged=True, stochastic_coeff=0.5, adversarial_coeff=0.5,
                  faithfulness_coeff=1.0, faithfulness_warmup_steps=200,
                  faithfulness_warmup_lr=0.01, source_b1=0.01,
                  source_scope="per_example", reference_count=32768.0,
                  grad_clip=1.0, ci_grad_clip=1.0)


@dataclasses.dataclass(frozen=True)
class VPD(PerProduct, ci_kinds.CIOptions):
  """The VPD objective and its options (defaults: the VPD paper's language
  model recipe where it gives them).

  .. math::  L = c_f L_{faith} + c_{imp} Σ_s Σ_c f_{sc}
              + c_{freq} Σ_s Σ_c f_{sc} \\log_2(1 + a' f_{sc})
              + c_{stoch} L_{subset} + c_{adv} L_{ppgd}

  Attributes:
    n_components: C_l per decomposed matrix: an int, or `{leaf: C_l}`.
    faithfulness_coeff: c_f [1e3], of the per-matrix normalised
      faithfulness.
    importance_coeff: c_imp [5e-6], of the smooth-L0 activity.
    frequency_coeff: c_freq [1e-6].
    stochastic_coeff: c_stoch [0.5], subset-routed uniform sources.
    adversarial_coeff: c_adv [0.5], persistent adversarial sources.
    merged: [False] the two reconstruction terms as one forward, each
      example adversarial with probability c_adv / (c_stoch + c_adv), else
      stochastic, weighted c_stoch + c_adv (the authors' toy recipe: the
      same terms in expectation, one forward fewer).
    ci_fn: 'layerwise' [default] (an MLP per product on its input),
      'global' (one MLP on every product's input), 'transformer' (for
      inputs `[T, i]` with a position axis: bidirectional transformers
      over the positions, one per chunk of products) or 'scalar' (SPD's
      MLP per subcomponent on `h_c = a · u_c`, of width `ci_hidden[0]`);
      with `ci_hidden`, `ci_d_model`, `ci_blocks`, `ci_heads`,
      `ci_chunks`, keywords of `ci_kinds.CIOptions`.
    ci_lr_scale: the CI function's learning rate as a multiple of the
      factors' (`Training.lr`, on the same schedule) [1.0]; the LM
      recipe's is 1/3 (5e-5 against 1.5e-4). Sweepable.
    factor_init: how the factors start: 'spd' [default] (normal, `u_c`
      at std `1/sqrt(d_out)` and `v_c` at `1/sqrt(C)` as the matrix is
      stored, SPD's reference) or 'vpd' (the VPD authors': the factor
      that reads the product's input at std `1/sqrt(d_in)`, the one that
      writes at `1/sqrt(C)`, whichever way the matrix is used).
    faithfulness_warmup_steps, faithfulness_warmup_lr: before training,
      the factors take this many Adam steps at this rate on the
      faithfulness alone [400, 1e-3]; 0 steps: none.
    n_warmup: ascents of the sources per step before the main loss [2].
    source_lr, source_warmup_frac: their Adam's step size [0.01], reached
      linearly over that fraction of training [0.025].
    source_b1: their Adam's first-moment decay [0.5] (β2 0.99, ε 1e-8).
    source_scope: 'shared' [default] (one set of sources for the whole
      batch) or 'per_example' (one set per example of the batch, by its
      index in the batch).
    source_per_position: for inputs with positions, one set of sources per
      position [True] (`[T, C+1]` shared, `[B, T, C+1]` per example), or
      one for every position (False).
    grad_clip: if set, the factors' gradient is clipped to this global
      norm before the optimiser [None].
    ci_grad_clip: the same for the CI function's gradient [None].
    gamma_start, gamma_end: the smooth-L0 width, linear over training
      [1.0 -> 0.01].
    reference_count: a' of the frequency term [None: the examples (and
      positions) of a batch].
    frequency_halflife: if set, the frequency term is taken at a debiased
      moving average of the frequencies with this half-life in steps (its
      gradient through this batch's at full scale; the average is state).
    recon: ['mse'] or 'kl' (logits).
    threshold: ci above which a subcomponent counts as active [0.1].
    eval_pgd_steps, eval_pgd_step: the evaluation's fresh sign-PGD [20,
      0.1].
  """
  n_components: int | Mapping[str, int] | tuple
  faithfulness_coeff: float = 1e3
  importance_coeff: float = 5e-6
  frequency_coeff: float = 1e-6
  stochastic_coeff: float = 0.5
  adversarial_coeff: float = 0.5
  merged: bool = False
  ci_lr_scale: float = 1.0
  factor_init: str = "spd"
  faithfulness_warmup_steps: int = 400
  faithfulness_warmup_lr: float = 1e-3
  n_warmup: int = 2
  source_lr: float = 0.01
  source_warmup_frac: float = 0.025
  source_b1: float = 0.5
  source_scope: str = "shared"
  source_per_position: bool = True
  grad_clip: float | None = None
  ci_grad_clip: float | None = None
  gamma_start: float = 1.0
  gamma_end: float = 0.01
  reference_count: float | None = None
  frequency_halflife: float | None = None
  recon: str = "mse"
  threshold: float = 0.1
  eval_pgd_steps: int = 20
  eval_pgd_step: float = 0.1

  SWEEPABLE: ClassVar[tuple[str, ...]] = (
      "faithfulness_coeff", "importance_coeff", "frequency_coeff",
      "stochastic_coeff", "adversarial_coeff", "ci_lr_scale")
  WARMUP_FRAC: ClassVar[float] = 0.0
  NAME: ClassVar[str] = "vpd"
  METRICS: ClassVar[tuple[str, ...]] = (
      "faithfulness", "stochastic_recon", "pgd_recon", "ci_masked_recon",
      "l0", "alive")
  SELECT: ClassVar[tuple[str, str]] = ("pgd_recon", "min")
  SCORE: ClassVar[str] = "ci"
  SCORE_NAME: ClassVar[str] = "causal importance"
  ACTIVE: ClassVar[str] = "causal importance above the threshold"
  EXTRAS: ClassVar[tuple[str, ...]] = ("causal_importances",)
  PARAMS: ClassVar[type] = objective.VPDParams
  PLAN: ClassVar[type] = objective.Plan
  CLI_DEFAULTS: ClassVar[dict] = dict(n_components=20)
  init_traceable: ClassVar[bool] = True

  def __post_init__(self):
    object.__setattr__(self, "n_components", _spd(self).n_components)
    self._check_ci(CI_FNS)
    check_positive(threshold=self.threshold, source_lr=self.source_lr,
                   gamma_start=self.gamma_start, gamma_end=self.gamma_end,
                   eval_pgd_step=self.eval_pgd_step,
                   ci_lr_scale=self.ci_lr_scale,
                   faithfulness_warmup_lr=self.faithfulness_warmup_lr)
    if self.faithfulness_warmup_steps < 0:
      raise ValueError(f"faithfulness_warmup_steps must be >= 0, got "
                       f"{self.faithfulness_warmup_steps}")
    for name in self.SWEEPABLE:
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if not (self.stochastic_coeff or self.adversarial_coeff):
      raise ValueError("stochastic_coeff and adversarial_coeff are both 0: "
                       "nothing reconstructs the target's outputs")
    if self.n_warmup < 0 or self.eval_pgd_steps < 0:
      raise ValueError("n_warmup and eval_pgd_steps must be >= 0")
    if self.frequency_halflife is not None:
      check_positive(frequency_halflife=self.frequency_halflife)
    if not 0 <= self.source_b1 < 1:
      raise ValueError(f"source_b1 must be in [0, 1), got {self.source_b1}")
    if not 0 <= self.source_warmup_frac <= 1:
      raise ValueError(f"source_warmup_frac must be in [0, 1], got "
                       f"{self.source_warmup_frac}")
    check_choice("source_scope", self.source_scope, SOURCE_SCOPES)
    check_choice("factor_init", self.factor_init, FACTOR_INITS)
    for name in ("grad_clip", "ci_grad_clip"):
      if getattr(self, name) is not None:
        check_positive(**{name: getattr(self, name)})
    check_choice("recon", self.recon, spd_objective.RECONS)

  def replace(self, **values) -> VPD:
    return dataclasses.replace(self, **values)

  def components_per_leaf(self, names) -> dict[str, int]:
    """`{leaf: C_l}` for the decomposed leaves `names` (as `SPD`)."""
    return _spd(self).components_per_leaf(names)

  # -- the engine's protocol ------------------------------------------------

  def check(self, target: Target, sample_fn: SampleFn, batch_size: int
            ) -> None:
    """`n_components` against the leaves, the sampler and apply_fn
    (abstractly), and every decomposed leaf used in products."""
    self.components_per_leaf(target.names)
    check_target(target, sample_fn, batch_size)
    plan = self.plan(target, sample_fn, batch_size, None)
    ci_kinds.check_inputs(self, lambda: spd_objective.example_input_shapes(
        target, plan, sample_fn))

  def init_params(self, key: Array, target: Target,
                  sample_fn: SampleFn | None = None) -> objective.VPDParams:
    if sample_fn is None:
      raise ValueError("VPD.init_params needs sample_fn (its products are "
                       "found by tracing the target on an example)")
    plan = self.plan(target, sample_fn, 1, None)
    return objective.init_params(key, target, plan,
                                 self.components_per_leaf(target.names), self)

  def init_state(self, key: Array, target: Target, params: Any,
                 sample_fn: SampleFn | None, batch_size: int
                 ) -> objective.VPDState:
    """Persistent sources, uniform, and their zero moments."""
    plan = self.plan(target, sample_fn, 1, None)
    shapes = spd_objective.input_shapes(target, plan, sample_fn, batch_size)
    # An input is [B, 1, *positions, i] (each example a batch of one).
    leads = {k: adversarial.scope_shape(self.source_scope, v[:1] + v[2:-1],
                                        self.source_per_position)
             for k, v in shapes.items()}
    return objective.init_state(key, plan, self.components_per_leaf(
        target.names), self, leads)

  def project(self, params):
    return params

  def gradient_transform(self):
    """With `grad_clip` (`ci_grad_clip`): the factors' (the CI function's)
    gradient clipped to that global norm."""
    if self.grad_clip is None and self.ci_grad_clip is None:
      return None
    clip = {name: optax.identity() if c is None else
            optax.clip_by_global_norm(c)
            for name, c in (("factors", self.grad_clip),
                            ("ci", self.ci_grad_clip))}
    return optax.multi_transform(clip, _groups)

  def hypers(self, **values) -> objective.Hypers:
    return objective.Hypers(**{n: values.get(n, getattr(self, n))
                               for n in self.SWEEPABLE})

  def bound(self, runs: list[dict[str, Any]]) -> VPD:
    """Every term is compiled in whatever the runs' coefficients."""
    del runs
    return self

  def check_runs(self, runs: list[dict[str, Any]], batch_size: int) -> None:
    for run in runs:
      self.replace(**{k: v for k, v in run.items() if k in self.SWEEPABLE})

  def plan(self, target: Target, sample_fn: SampleFn, batch_size: int,
           params: Any) -> objective.Plan:
    """The target's factored products, traced on one example (as SPD)."""
    return _spd(self).plan(target, sample_fn, batch_size, params)

  def loss(self, params, x, target, plan, key=None, hypers=None,
           progress=None):
    """Refused: VPD's step is its own (`update`), its loss needs the
    persistent sources."""
    raise NotImplementedError("VPD trains through update() (its loss needs "
                              "its persistent sources)")

  def update(self, params, opt_state, state, x, target, plan, key, hypers,
             progress, optimizer):
    """One step (`vpd_objective.update`)."""
    return objective.update(self, params, opt_state, state, x, target, plan,
                            key, hypers, progress, optimizer)

  def evaluate(self, result, sample_fn: SampleFn, key: Array, *,
               batch_size: int, n_batches: int) -> dict[str, Any]:
    """Normalised faithfulness; reconstruction with subset routing and
    uniform sources, with fresh sign-PGD sources, and with `ci` alone; L0
    per product and summed; alive subcomponents. Float32."""
    out = self.evaluate_batches(
        result, lambda x, k: _evaluate_batch(
            self, result.plan, result.target, result.components, x, k),
        sample_fn, key, batch_size, n_batches)
    out["faithfulness"] = float(objective.faithfulness(
        upcast(result.target.weights, jnp.float32), result.components))
    return out

  # -- its own answers for the analyses (the rest: `PerProduct`) -------------

  def scores(self, result, x) -> dict[str, Array]:
    """`{product: ci [B, (T,) C_l]}`, the lower-leaky causal importances."""
    return _causal_importances(self, result.plan, result.target,
                               result.components, x)


def _groups(params):
  """Each leaf of `VPDParams` (or of a tree shaped like it): 'ci' under its
  `ci` field, else 'factors'."""
  def label(path, _):
    first = path[0] if path else None
    return "ci" if getattr(first, "name", None) == "ci" else "factors"
  return jax.tree_util.tree_map_with_path(label, params)


def _spd(m: VPD) -> SPD:
  """The SPD of the same components: its products and `n_components`."""
  return SPD(n_components=m.n_components, importance_coeff=0.0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _causal_importances(s, plan, target, params, x):
  _, inputs = objective.product_inputs(target, plan, x)
  lower, _ = objective.importances(s, params, plan, inputs)
  return {k: spd_objective.per_example(g) for k, g in lower.items()}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate_batch(s, plan, target, params, x, key):
  return objective.evaluate_batch(s, params, target, plan, x, key)
