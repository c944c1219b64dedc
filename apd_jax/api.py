"""`decompose`: APD on any `apply_fn(params, x)` over a params pytree.

    result = decompose(apply_fn, params, sample_fn, include="W",
                       n_components=5, topk=0.211, steps=20_000)
    result.component_weights      # {leaf name: [C, i, o]}
    result.attributions(x)        # [B, C]
    result.topk_mask(x)           # [B, C]
    result.metrics                # final faithfulness, top-k recon, L0, dead

Every argument is checked before anything is compiled; bad input raises a
`ValueError` that names the problem.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from apd_jax import attribution
from apd_jax import checkpoint as ckpt_lib
from apd_jax import components as comp_lib
from apd_jax import factored
from apd_jax import losses
from apd_jax import masking
from apd_jax import metrics as metrics_lib
from apd_jax import objective
from apd_jax import optim
from apd_jax import selection
from apd_jax import sharding
from apd_jax import train
from apd_jax.target import ApplyFn
from apd_jax.target import SampleFn
from apd_jax.target import Target
from apd_jax.target import check

Array = jax.Array
INITS = ("random", "svd")


@dataclasses.dataclass(frozen=True)
class Decomposition:
  """A trained decomposition and the target it decomposes."""
  target: Target
  settings: objective.Settings
  components: comp_lib.Components
  metrics: dict[str, Any]
  history: list[dict]

  @property
  def component_weights(self) -> dict[str, Array]:
    """`{leaf name: P [C, i, o]}`."""
    return comp_lib.component_weights(self.components)

  def attributions(self, x: Array) -> Array:
    """Squared attributions `[B, C]` of the batch `x` (exact, also where
    training estimated them from random projections)."""
    exact = dataclasses.replace(self.settings, attribution_projections=0)
    return _attributions(self.target, exact, self.components, x)

  def topk_mask(self, x: Array) -> Array:
    """The top-k mask `[B, C]` training would use on the batch `x`."""
    return masking.make_mask(self.attributions(x), self.settings.topk,
                             batch_topk=self.settings.batch_topk)

  def apply(self, x: Array, mask: Array | None = None) -> Array:
    """The target's output with weights `W(mask)` per example (all if None)."""
    if mask is None:
      return _full_apply(self.target, self.components, x)
    return _masked_apply(self.target, self.components, mask, x)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _attributions(target, settings, comps, x):
  return objective.attributions(target, settings, comps, x)[0]


@functools.partial(jax.jit, static_argnums=0)
def _masked_apply(target, comps, mask, x):
  return objective.masked_forward(target, comps, mask, x,
                                  _factored_by_default(target.weights))[0]


@functools.partial(jax.jit, static_argnums=0)
def _full_apply(target, comps, x):
  """All components on: one batched pass with `Σ_c P_c`, no per-example
  weights."""
  return target.batch(x, comp_lib.summed_weights(
      comp_lib.component_weights(comps)))[0]


FACTORED_MIN_SIZE = 4096   # Σ_l i·o from which the factored form pays off


def _factored_by_default(weights) -> bool:
  """The factored form for layers of real size; for tiny ones (TMS) the
  component weights cost less overhead."""
  return sum(w.size for w in weights.values()) >= FACTORED_MIN_SIZE


def _positive(**values):
  for name, v in values.items():
    if v is None or not v > 0:
      raise ValueError(f"{name} must be positive, got {v!r}")


CHOICES = dict(attribution_type=objective.ATTRIBUTIONS,
               attribution_point=objective.POINTS,
               attribution_mode=("auto", "forward", "reverse", "lazy"),
               recon=objective.RECONS, sparsity=objective.SPARSITIES,
               init=INITS, lr_schedule=optim.SCHEDULES)


def _check_choices(**values):
  for name, value in values.items():
    if value not in CHOICES[name]:
      raise ValueError(
          f"{name} must be one of {CHOICES[name]}, got {value!r}")


def _check_topk(topk, n_components, batch_size, batch_topk):
  if batch_topk:
    if topk > n_components:
      raise ValueError(f"topk={topk} is larger than n_components="
                       f"{n_components}")
    if masking.batch_topk_count(topk, batch_size) < 1:
      raise ValueError(f"batch top-k keeps int(topk*batch_size) = 0 entries "
                       f"(topk={topk}, batch_size={batch_size})")
  elif topk != int(topk) or topk > n_components:
    raise ValueError(f"per-example top-k needs an integer topk <= "
                     f"n_components={n_components}, got {topk}")


def _check_activations(tgt, sample_fn, batch_size, attribution_type,
                       hidden_act_coeff, hidden_acts):
  """Runs `sample_fn` and `apply_fn` abstractly; checks the activations that
  activation attributions and hidden-activation reconstruction need."""
  _, out = check(tgt, sample_fn, batch_size)
  acts = out[1] if tgt.has_aux else {}
  if attribution_type == "activation":
    missing = [n for n in tgt.names if n not in acts]
    if missing:
      raise ValueError(
          f"attribution_type='activation' needs apply_fn (has_aux=True) to "
          f"return each decomposed leaf's input; missing {missing}")
  if hidden_act_coeff and not objective.select_acts(acts, hidden_acts):
    raise ValueError(
        f"hidden_act_coeff={hidden_act_coeff} needs has_aux=True and "
        f"activations matching hidden_acts={hidden_acts!r}; got "
        f"{sorted(acts)}")


def decompose(apply_fn: ApplyFn, params: Any, sample_fn: SampleFn, *,
              include: str, n_components: int, topk: float,
              batch_topk: bool = True, rank: int | None = None,
              steps: int = 10_000, batch_size: int = 2048, lr: float = 1e-3,
              lr_schedule: str = "constant", warmup_frac: float = 0.0,
              seed: int = 0, faithfulness_coeff: float = 1.0,
              minimality_coeff: float = 1.0, simplicity_coeff: float = 1.0,
              hidden_act_coeff: float = 0.0, hidden_acts: str = ".*",
              schatten_p: float = 1.0, attribution_type: str = "gradient",
              attribution_point: str = "target",
              attribution_mode: str = "auto",
              attribution_projections: int = 0, recon: str = "mse",
              sparsity: str = "topk", lp_p: float = 1.0,
              init: str = "random", init_gain: float = 1.0,
              unit_norm_matrices: bool = False, factored: bool | None = None,
              has_aux: bool = False,
              eval_batches: int = 10, log_every: int = 1000,
              callback: Callable[[int, dict], None] | None = None,
              mesh: jax.sharding.Mesh | None = None,
              checkpoint_dir: str | None = None, checkpoint_every: int = 0,
              keep_checkpoints: int = 3,
              ) -> Decomposition:
  """Decomposes the leaves of `params` matched by `include` into components.

  Args:
    apply_fn: `apply_fn(params, x_batch) -> y_batch` (or `(y, acts)` with
      `has_aux`), any pure JAX function; a Flax `model.apply` works as is.
    params: the target's params pytree θ*.
    sample_fn: `sample_fn(key, batch_size) -> x_batch`, jittable.
    include: regex searched in `jax.tree_util.keystr` of each leaf's path;
      the matched leaves (all 2-D) are decomposed.
    n_components: C.
    topk: batch top-k: mean active components per example (a float);
      per-example top-k (`batch_topk=False`): an integer.
    rank: m, each component's rank per leaf; None: full rank `min(i, o)`.
    attribution_type: 'gradient', 'ablation' or 'activation'.
    attribution_point: 'target' (gradients at θ*) or 'components' (at Σ P).
    attribution_mode: 'auto' (cheapest by XLA's cost analysis), 'forward'
      or 'reverse' autodiff for gradient attributions, or 'lazy' (forward
      mode with tangents as per-example coefficients times bases shared by
      the batch; factored form only).
    attribution_projections: k > 0 estimates gradient attributions during
      training from k random projections of the outputs (unbiased; reverse
      mode); 0 computes them exactly. With 'auto', exact attributions are
      used instead where they cost no more. Evaluation is always exact.
    recon: 'mse', or 'kl' for logit outputs (classes on the last axis).
    sparsity: 'topk' (the paper's method) or 'lp' (the L_p variant, weight
      `minimality_coeff` and exponent `lp_p`).
    init: 'random' (Xavier-normal, gain `init_gain`) or 'svd' (components
      summing exactly to the target; with `unit_norm_matrices` the U columns
      are renormalised, so the sum is then no longer exact).
    factored: run the target in factored form `Σ_c α_c (a U_c) V_c` (True)
      or with `[C, i, o]` component weights (False); None: factored unless
      the decomposed leaves hold fewer than 4096 parameters in all.
    eval_batches: batches for the final metrics.
    callback: called as `callback(step, record)` at every log.
    mesh: the devices, with axes 'data' (the batch is split over it) and
      'component' (C is split over it); None: all devices on 'data' (see
      `sharding.make_mesh`).
    checkpoint_dir: if set, the run checkpoints there (every
      `checkpoint_every` steps, a multiple of `log_every`, 0 for only at the
      end, and on SIGTERM) keeping the last `keep_checkpoints`, and resumes
      from the latest checkpoint found there.
    (The rest are the loss coefficients and optimizer settings of the spec.)

  Returns:
    A `Decomposition`.
  """
  _positive(n_components=n_components, topk=topk, steps=steps,
            batch_size=batch_size, lr=lr, schatten_p=schatten_p,
            eval_batches=eval_batches, log_every=log_every,
            keep_checkpoints=keep_checkpoints)
  if checkpoint_every < 0 or checkpoint_every % log_every:
    raise ValueError(f"checkpoint_every must be a non-negative multiple of "
                     f"log_every={log_every}, got {checkpoint_every}")
  mesh = sharding.make_mesh() if mesh is None else mesh
  sharding.check_sizes(mesh, batch_size=batch_size,
                       n_components=n_components)
  if rank is not None:
    _positive(rank=rank)
  names = selection.select_leaves(params, include)
  _check_choices(attribution_type=attribution_type,
                 attribution_point=attribution_point,
                 attribution_mode=attribution_mode, recon=recon,
                 sparsity=sparsity, init=init, lr_schedule=lr_schedule)
  _check_topk(topk, n_components, batch_size, batch_topk)
  if (attribution_projections != int(attribution_projections)
      or attribution_projections < 0):
    raise ValueError(f"attribution_projections must be a non-negative "
                     f"integer, got {attribution_projections!r}")
  if attribution_projections and (attribution_type != "gradient"
                                  or attribution_mode in ("forward", "lazy")):
    raise ValueError("attribution_projections needs attribution_type="
                     "'gradient' and attribution_mode 'auto' or 'reverse'")
  if attribution_projections and factored is False:
    raise ValueError("attribution_projections needs the factored form "
                     "(factored=None or True)")
  if not 0 <= warmup_frac < 1:
    raise ValueError(f"warmup_frac must be in [0, 1), got {warmup_frac}")
  tgt = Target(apply_fn, params, names, has_aux)
  _check_activations(tgt, sample_fn, batch_size, attribution_type,
                     hidden_act_coeff, hidden_acts)

  weights = tgt.weights
  shapes = {n: tuple(w.shape) for n, w in weights.items()}
  ranks = {n: rank or comp_lib.default_rank(shapes[n]) for n in names}
  key = jax.random.PRNGKey(seed)
  init_key, data_key, eval_key = jax.random.split(key, 3)
  optimizer = optim.make_optimizer(
      lr, steps, warmup_frac=warmup_frac, lr_schedule=lr_schedule,
      unit_norm_matrices=unit_norm_matrices)

  def shardings(state):
    return sharding.train_state(mesh, state, optimizer)

  def new_state(comps):
    comps = optim.renormalize(comps, unit_norm_matrices)
    return train.init_state(comps, optimizer)

  if init == "svd":  # needs concrete singular values: on the host, then split
    comps = comp_lib.init_svd(init_key, weights, n_components=n_components,
                              rank=ranks)
    comps = sharding.put(comps, sharding.components(mesh, comps))
  else:  # drawn directly into the shards
    comps = jax.jit(_random_factors, static_argnums=(1, 2, 3, 4),
                    out_shardings=sharding.leading_component(mesh))(
                        sharding.put(init_key, sharding.replicated(mesh)),
                        tuple(shapes.items()), n_components,
                        tuple(ranks.items()), init_gain)
  state = sharding.init(new_state, shardings, comps)

  settings = objective.Settings(
      topk=topk, batch_topk=batch_topk, faithfulness_coeff=faithfulness_coeff,
      minimality_coeff=minimality_coeff, simplicity_coeff=simplicity_coeff,
      hidden_act_coeff=hidden_act_coeff, hidden_acts=hidden_acts,
      schatten_p=schatten_p, attribution=attribution_type,
      attribution_point=attribution_point,
      attribution_mode="forward" if attribution_mode == "auto"
      else attribution_mode,
      attribution_projections=int(attribution_projections),
      recon=recon, sparsity=sparsity, lp_p=lp_p,
      unit_norm_matrices=unit_norm_matrices,
      factored=((_factored_by_default(tgt.weights)
                 or bool(attribution_projections)) if factored is None
                else bool(factored)))
  if attribution_mode == "auto" and attribution_type == "gradient":
    settings = _cheapest_attribution(tgt, settings, state.components,
                                     sample_fn, batch_size)

  step_fn = train.make_train_step(tgt, settings, sample_fn, batch_size,
                                  optimizer, mesh)
  state_shardings = shardings(state)
  checkpoints, history = None, []
  if checkpoint_dir:
    checkpoints = ckpt_lib.Checkpoints(checkpoint_dir, every=checkpoint_every,
                                       keep=keep_checkpoints)
    if checkpoints.latest_step() is not None:
      state, history = checkpoints.restore(state, state_shardings)
      logging.info("resumed from the checkpoint at step %d in %s",
                   int(state.step), checkpoints.directory)
  t0 = time.perf_counter()
  try:
    state, history = train.fit(
        state, step_fn, sharding.put(data_key, sharding.replicated(mesh)),
        steps=steps, log_every=log_every, callback=callback,
        state_shardings=state_shardings, checkpoints=checkpoints,
        history=history)
  finally:
    if checkpoints is not None:
      checkpoints.close()
  comps = jax.tree.map(jnp.asarray, sharding.gather(state.components))
  comps = optim.renormalize(comps, unit_norm_matrices)
  wall = time.perf_counter() - t0
  result = Decomposition(tgt, settings, comps, {}, history)
  final = evaluate(result, sample_fn, eval_key, batch_size=batch_size,
                   n_batches=eval_batches)
  final.update(steps=steps, wall_seconds=wall,
               attribution_mode=settings.attribution_mode,
               attribution_contract=settings.attribution_contract)
  return dataclasses.replace(result, metrics=final)


def _random_factors(key, shapes, n_components, ranks, gain):
  """`init_random` with hashable arguments (compiled once per shape)."""
  return comp_lib.init_random(key, dict(shapes), n_components=n_components,
                              rank=dict(ranks), gain=gain)


def _cheapest_attribution(tgt, settings, comps, sample_fn, batch_size
                          ) -> objective.Settings:
  """Lazy, forward or reverse mode, and in reverse mode each factored
  product's contraction, whichever XLA's cost analysis says costs fewest
  flops."""
  x = jax.eval_shape(lambda k: sample_fn(k, batch_size),
                     jax.random.PRNGKey(0))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          comps)
  x0 = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
  n = len(factored.Model(tgt.forward, tgt.weights, x0).occurrences)

  def cost(mode, contract, base=settings):
    s = dataclasses.replace(base, attribution_mode=mode,
                            attribution_contract=contract)
    return attribution.flops(
        lambda c, xb: objective.attributions(
            tgt, s, c, xb, jax.random.PRNGKey(0))[0], abstract, x)

  contract = ("direct",) * n
  best = cost("reverse", contract)
  for k in range(n):
    trial = contract[:k] + ("cotangent",) + contract[k + 1:]
    trial_cost = cost("reverse", trial)
    if trial_cost < best:
      contract, best = trial, trial_cost
  # Exact forward-mode attributions win ties, and win over an estimate from
  # projections when they cost no more.
  exact = dataclasses.replace(settings, attribution_projections=0)
  for mode in (("lazy", "forward") if settings.factored else ("forward",)):
    trial_cost = cost(mode, contract, exact)
    if trial_cost <= best:
      return dataclasses.replace(exact, attribution_mode=mode)
  return dataclasses.replace(settings, attribution_mode="reverse",
                             attribution_contract=contract)


def evaluate(result: Decomposition, sample_fn: SampleFn, key: Array, *,
             batch_size: int, n_batches: int) -> dict[str, Any]:
  """Final metrics over `n_batches` fresh batches.

  Returns faithfulness, top-k reconstruction loss, L0 (mean active components
  per example), and the dead components (in no top-k mask of any batch).
  """
  P = result.component_weights
  faith = float(losses.faithfulness(result.target.weights,
                                    comp_lib.summed_weights(P)))
  recon_fn = losses.kl if result.settings.recon == "kl" else losses.mse
  recon, l0s, masks = [], [], []
  for i in range(n_batches):
    x = sample_fn(jax.random.fold_in(key, i), batch_size)
    mask = result.topk_mask(x)
    y = result.target.batch(x)[0]
    recon.append(float(recon_fn(y, result.apply(x, mask))))
    l0s.append(float(metrics_lib.l0(mask)))
    masks.append(jnp.any(mask > 0, axis=0))
  dead = metrics_lib.dead_components(jnp.stack(masks))
  return dict(faithfulness=faith, topk_recon=float(np.mean(recon)),
              l0=float(np.mean(l0s)), dead_components=len(dead),
              dead_component_ids=[int(c) for c in dead])
