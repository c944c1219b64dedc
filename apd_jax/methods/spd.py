"""`SPD`: what Stochastic Parameter Decomposition optimises.

    method = SPD(n_components=20, importance_coeff=3e-3, importance_p=1.0)
    result = apd_jax.decompose(apply_fn, params, sample_fn, include="W",
                               method=method, training=Training(...))
    result.causal_importances(x)      # {occurrence: [B, C_l]}

SPD (Bushnaq, Braun & Sharkey 2025) keeps APD's goal and replaces its top-k
masks chosen by attribution, and its Schatten penalty, with learned causal
importances and random masks between them and 1 (`spd_objective.py`). The
object is the method's side of the engine (`methods/base.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from typing import ClassVar
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from apd_jax.core import components as comp_lib
from apd_jax.core import losses
from apd_jax.core.target import SampleFn
from apd_jax.core.target import Target
from apd_jax.core.target import check as check_target
from apd_jax.core.target import upcast
from apd_jax.methods import ci_kinds
from apd_jax.methods import spd_objective as objective
from apd_jax.methods.base import check_choice
from apd_jax.methods.base import check_positive

Array = jax.Array


class PerProduct:
  """What SPD and VPD answer alike: a group of components per factored
  product (its label), scored by the method's `scores` (causal
  importances, active above its `threshold`), masked product by product.
  Mixed into `SPD` and `vpd.VPD`."""

  # -- what analyses and export ask (`base.Method`) ---------------------------

  def groups(self, result) -> dict[str, tuple[str, ...]]:
    """A group per factored product (its label), of one leaf each."""
    plan = result.plan
    return {k: (leaf,) for k, leaf in zip(plan.labels, plan.leaves,
                                          strict=True)}

  def masks(self, result, x, batch: bool = False) -> dict[str, Array]:
    """The masks of the importance-masked pass: the importances themselves
    (per example; `batch` changes nothing)."""
    del batch
    return self.scores(result, x)

  def active(self, result, x, batch: bool = False) -> dict[str, Array]:
    """`{product: importance > threshold}` (per example)."""
    del batch
    return {k: g > self.threshold for k, g in self.scores(result, x).items()}

  def masked_apply(self, result, mask, x) -> Any:
    """The target's output with product k computed as
    `Σ_c mask[k]_bc (a u_c) v_cᵀ` (a product left out of the dict `mask`
    keeps the target's weights)."""
    plan = result.plan
    if not isinstance(mask, dict) or set(mask) - set(plan.labels):
      raise ValueError(f"a mask of {type(self).__name__} is a dict over the "
                       f"products {list(plan.labels)}")
    coefs = tuple(mask.get(k) for k in plan.labels)
    return _masked_apply(result.target, plan, result.components, coefs, x)

  # -- its own analyses, as `result.<name>(x)` (EXTRAS) --------------------

  def causal_importances(self, result, x: Array) -> dict[str, Array]:
    """`{product: importances [B, (T,) C_l]}`, each subcomponent's causal
    importance on the batch `x`, per factored product of the target (keyed
    by the leaf's name, `name#j` for the j-th use of a leaf used more than
    once)."""
    return self.scores(result, x)

  # -- shared by the evaluations ----------------------------------------------

  def evaluate_batches(self, result, batch_fn, sample_fn: SampleFn,
                       key: Array, batch_size: int, n_batches: int
                       ) -> dict[str, Any]:
    """The means over `n_batches` fresh batches of `batch_fn(x, key)`'s
    metrics, and the alive subcomponents per product and in all (active on
    some example: `batch_fn`'s `seen`, one bool array `[C_l]` per
    product)."""
    rows, alive = [], None
    for i in range(n_batches):
      k = jax.random.fold_in(key, i)
      m = batch_fn(sample_fn(k, batch_size), k)
      rows.append(m)
      seen = m.pop("seen")
      alive = seen if alive is None else [a | s for a, s in
                                        zip(alive, seen, strict=True)]
    out = {k: float(np.mean([float(r[k]) for r in rows])) for k in rows[0]}
    for label, a in zip(result.plan.labels, alive, strict=True):
      out[f"alive/{label}"] = int(np.sum(a))
    out["alive"] = int(sum(np.sum(a) for a in alive))
    out["threshold"] = self.threshold
    return out


@dataclasses.dataclass(frozen=True)
class SPD(PerProduct, ci_kinds.CIOptions):
  """The SPD objective and its options (SPD paper, §2).

  .. math::  L = c_f \\|θ^* − Σ_c u_c v_cᵀ\\|^2 / N
              + β_1 D(f(x|θ^*), f(x|m))
              + β_2 \\frac{1}{K} Σ_k D(f(x|θ^*), f(x|m_k))
              + β_3 Σ_k Σ_c mean_b G_{k,c}^p

  with stochastic masks `m = G + (1 − G) r`, `m_k` masking product k only.

  Attributes (defaults in brackets; paper values for TMS 5-2 after "paper"):
    n_components: C_l, rank-one subcomponents per decomposed matrix: an int
      for every matrix, or `{leaf name: C_l}` for each. Paper: 20 (TMS
      5-2), 200 (40-10), 100 (residual MLP 1 layer).
    importance_coeff: β3, weight of the importance minimality. Paper: 3e-3
      (TMS 5-2), 1e-4 (40-10), 1e-5 (residual MLPs).
    importance_p: p of `G^p` (> 0). Paper: 1 (TMS 5-2), 2 (the others).
    stochastic_coeff: β1 [1.0], every product masked.
    layerwise_coeff: β2 [1.0], one product masked at a time.
    layerwise_routing: how the β2 term masks: ['each'] one pass per
      product with only it masked (the paper's), or 'subset' one pass in
      which each example (position) masks a uniform random subset of the
      products and keeps the others at the target's weights (VPD's subset
      routing: one forward instead of one per product).
    faithfulness_coeff: c_f [1.0].
    gate_hidden: d, the hidden width of each causal-importance MLP [16].
    ci_fn: ['scalar'] (the paper's MLP per subcomponent on `h_c`), or a
      function of the whole input: 'layerwise', 'global', 'transformer'
      (VPD's, `ci_kinds`; with its keyword options `ci_hidden`, ...).
    recon: ['mse'] over all output elements, or 'kl' (logits).
    threshold: G above which a subcomponent counts as active in the L0 and
      alive counts [0.1].
    importance_p_final: if set, p moves linearly from `importance_p` to it
      between the fractions `p_anneal_start` [0.0] and `p_anneal_end` [1.0]
      of training.
  """
  n_components: int | Mapping[str, int] | tuple
  importance_coeff: float
  importance_p: float = 1.0
  stochastic_coeff: float = 1.0
  layerwise_coeff: float = 1.0
  layerwise_routing: str = "each"
  faithfulness_coeff: float = 1.0
  gate_hidden: int = 16
  recon: str = "mse"
  threshold: float = 0.1
  importance_p_final: float | None = None
  p_anneal_start: float = 0.0
  p_anneal_end: float = 1.0
  ci_fn: str = dataclasses.field(default="scalar", kw_only=True)

  SWEEPABLE: ClassVar[tuple[str, ...]] = (
      "faithfulness_coeff", "stochastic_coeff", "layerwise_coeff",
      "importance_coeff", "importance_p")
  WARMUP_FRAC: ClassVar[float] = 0.0   # the SPD paper's (no warm-up)
  NAME: ClassVar[str] = "spd"
  METRICS: ClassVar[tuple[str, ...]] = (
      "faithfulness", "stochastic_recon", "ci_masked_recon", "l0", "alive")
  SELECT: ClassVar[tuple[str, str]] = ("stochastic_recon", "min")
  SCORE: ClassVar[str] = "G"
  ACTIVE: ClassVar[str] = "causal importance G above the threshold"
  SCORE_NAME: ClassVar[str] = "causal importance"
  EXTRAS: ClassVar[tuple[str, ...]] = ("causal_importances",)
  PARAMS: ClassVar[type] = objective.SPDParams
  PLAN: ClassVar[type] = objective.Plan
  # The command line's values of the required options (TMS 5-2, the paper's).
  CLI_DEFAULTS: ClassVar[dict] = dict(n_components=20, importance_coeff=3e-3)

  def __post_init__(self):
    C = self.n_components
    if isinstance(C, Mapping) or (isinstance(C, (tuple, list)) and C
                                  and isinstance(C[0], (tuple, list))):
      pairs = tuple(sorted((str(k), int(v)) for k, v in dict(C).items()))
      object.__setattr__(self, "n_components", pairs)  # hashable
      for name, v in pairs:
        check_positive(**{f"n_components[{name!r}]": v})
    else:
      check_positive(n_components=C)
    check_positive(importance_p=self.importance_p,
                   gate_hidden=self.gate_hidden, threshold=self.threshold)
    self._check_ci(ci_kinds.KINDS)
    for name in ("importance_coeff", "stochastic_coeff", "layerwise_coeff",
                 "faithfulness_coeff"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if not (self.stochastic_coeff or self.layerwise_coeff):
      raise ValueError("stochastic_coeff and layerwise_coeff are both 0: "
                       "nothing reconstructs the target's outputs")
    check_choice("recon", self.recon, objective.RECONS)
    check_choice("layerwise_routing", self.layerwise_routing,
                 ("each", "subset"))
    if self.importance_p_final is not None:
      check_positive(importance_p_final=self.importance_p_final)
      if not 0 <= self.p_anneal_start <= self.p_anneal_end <= 1:
        raise ValueError(f"need 0 <= p_anneal_start <= p_anneal_end <= 1, "
                         f"got {self.p_anneal_start}, {self.p_anneal_end}")

  def replace(self, **values) -> SPD:
    return dataclasses.replace(self, **values)

  def components_per_leaf(self, names) -> dict[str, int]:
    """`{leaf: C_l}` for the decomposed leaves `names`."""
    if not isinstance(self.n_components, tuple):
      return {n: int(self.n_components) for n in names}
    given = dict(self.n_components)
    missing = sorted(set(names) - set(given))
    extra = sorted(set(given) - set(names))
    if missing or extra:
      raise ValueError(f"n_components names {sorted(given)}; the decomposed "
                       f"leaves are {sorted(names)} (missing {missing}, not "
                       f"decomposed {extra})")
    return {n: given[n] for n in names}

  # -- the engine's protocol ------------------------------------------------

  def check(self, target: Target, sample_fn: SampleFn, batch_size: int
            ) -> None:
    """Checks `n_components` against the leaves, the sampler and apply_fn
    (abstractly) and that every decomposed leaf is used in products."""
    self.components_per_leaf(target.names)
    check_target(target, sample_fn, batch_size)
    plan = self.plan(target, sample_fn, batch_size, None)
    ci_kinds.check_inputs(self, lambda: objective.example_input_shapes(
        target, plan, sample_fn))

  init_traceable: ClassVar[bool] = True   # drawn directly into shards

  def init_params(self, key: Array, target: Target,
                  sample_fn: SampleFn | None = None) -> objective.SPDParams:
    """Factors and one causal-importance MLP per subcomponent of every
    product: the products are found by running the target on an example
    shaped like `sample_fn`'s (required)."""
    if sample_fn is None:
      raise ValueError("SPD.init_params needs sample_fn (its causal-"
                       "importance functions are per product of the "
                       "target, found by tracing it on an example)")
    plan = self.plan(target, sample_fn, 1, None)
    return objective.init_params(key, target, plan,
                                 self.components_per_leaf(target.names),
                                 self.gate_hidden, self)

  def project(self, params):
    """The parameters as the loss sees them: unchanged."""
    return params

  def gradient_transform(self):
    """No transform before the optimiser."""
    return None

  def hypers(self, **values) -> objective.Hypers:
    """The traced numeric options (`values` override this object's)."""
    return objective.Hypers(**{n: values.get(n, getattr(self, n))
                               for n in self.SWEEPABLE})

  def bound(self, runs: list[dict[str, Any]]) -> SPD:
    """The static method of a sweep: each reconstruction pass compiled in if
    any run uses it."""
    big = {n: max([abs(r.get(n, getattr(self, n))) for r in runs])
           for n in ("stochastic_coeff", "layerwise_coeff")}
    return self.replace(**big)

  def check_runs(self, runs: list[dict[str, Any]], batch_size: int) -> None:
    """Checks each sweep run's values as `__post_init__` would."""
    for run in runs:
      self.replace(**{k: v for k, v in run.items() if k in self.SWEEPABLE})

  def plan(self, target: Target, sample_fn: SampleFn, batch_size: int,
           params: Any) -> objective.Plan:
    """The target's factored products, traced on one example."""
    x = jax.eval_shape(lambda k: sample_fn(k, 1), jax.random.PRNGKey(0))
    return objective.make_plan(
        target, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))

  def loss(self, params, x, target, plan, key=None, hypers=None,
           progress=None):
    """`(L, metrics)` of one batch (`spd_objective.loss_fn`)."""
    return objective.loss_fn(params, x, target, self, plan, key, hypers,
                             progress)

  def evaluate(self, result, sample_fn: SampleFn, key: Array, *,
               batch_size: int, n_batches: int) -> dict[str, Any]:
    """Faithfulness; stochastic and layerwise reconstruction with fresh
    masks; the reconstruction with masks `G` (r = 0); L0 per occurrence and
    summed (`G > threshold`); alive subcomponents (active on some example
    of the `n_batches` batches). All computed in float32 (or wider),
    whatever the target's dtype."""
    out = self.evaluate_batches(
        result, lambda x, k: _evaluate_batch(
            self, result.plan, result.target, result.components, x, k),
        sample_fn, key, batch_size, n_batches)
    out["faithfulness"] = float(losses.faithfulness(
        upcast(result.target.weights, jnp.float32),
        comp_lib.summed_from_factors(result.components)))
    return out

  # -- its own answers for the analyses (the rest: `PerProduct`) -------------

  def scores(self, result, x) -> dict[str, Array]:
    """`{product: G [B, (T,) C_l]}`, the causal importances on `x`."""
    return _causal_importances(self, result.target, result.plan,
                               result.components, x)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _causal_importances(s, target, plan, params, x):
  return objective.causal_importances(params, target, plan, x, s)


@functools.partial(jax.jit, static_argnums=1)
def _masked_apply(target, plan, params, coefs, x):
  return objective.masked_forward(target, params, plan, coefs, x)[0]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate_batch(s: SPD, plan, target, params, x, key) -> dict:
  """One evaluation batch's reconstructions (fresh masks, and `G` alone;
  in float32 whatever the target's dtype), L0s and which subcomponents
  were active."""
  (y, _), inputs = objective.target_pass(target, x)
  G, _ = objective.importances(params, plan, inputs, s)
  loss = losses.kl if s.recon == "kl" else losses.mse
  recon = lambda a, b: loss(*upcast((a, b), jnp.float32))  # noqa: E731
  k1, k2 = jax.random.split(key)
  stoch = objective.stochastic_recon(target, params, plan, y, G, x, k1, recon)
  layer = (objective.subset_recon if s.layerwise_routing == "subset"
           else objective.layerwise_recon)(target, params, plan, y, G, x, k2,
                                           recon)
  ci = recon(y, objective.masked_forward(target, params, plan, G, x)[0])
  active = [g > s.threshold for g in G]
  l0 = {f"l0/{label}": jnp.mean(jnp.sum(a, axis=-1))
        for label, a in zip(plan.labels, active, strict=True)}
  seen = [jnp.any(a.reshape(-1, a.shape[-1]), axis=0) for a in active]
  return dict(stochastic_recon=stoch, layerwise_recon=layer,
              ci_masked_recon=ci, l0=sum(l0.values()), **l0, seen=seen)

