"""`decompose`: any method on any `apply_fn(params, x)` over a params pytree.

    method = APD(n_components=5, topk=0.211, rank=3, simplicity_coeff=0.7)
    training = Training(steps=20_000, batch_size=2048, lr=3e-2)
    result = decompose(apply_fn, params, sample_fn, include="W",
                       method=method, training=training)
    result.component_weights      # {leaf name: [C, i, o]}
    result.scores(x)              # {group: [B, C_g]}
    result.active(x)              # {group: [B, C_g] bool}
    result.metrics                # final faithfulness, reconstruction, L0

`decompose` is a short composition of the building blocks below
(`make_target`, `check_inputs`, `init_state`, `make_train_step`, `fit`,
`evaluate`), which a loop of your own can use too. Every input is checked
before anything is compiled; bad input raises a `ValueError` that names it.
Nothing here knows which method it runs: it asks the method (`methods/base.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from apd_jax.analysis import summary as summary_lib
from apd_jax.core import components as comp_lib
from apd_jax.core import selection
from apd_jax.core import target as target_lib
from apd_jax.core.target import ApplyFn
from apd_jax.core.target import SampleFn
from apd_jax.core.target import Target
from apd_jax.core.target import check_sampler
from apd_jax.training import checkpoint as ckpt_lib
from apd_jax.training import cpu
from apd_jax.training import sharding
from apd_jax.training import train
from apd_jax.training.options import Training
from apd_jax.training.train import TrainState
from apd_jax.training.train import fit

Array = jax.Array
__all__ = ["Decomposition", "check_inputs", "decompose", "evaluate", "fit",
           "init_state", "make_target", "make_train_step", "run_keys",
           "split_options"]


@dataclasses.dataclass(frozen=True)
class Decomposition:
  """A trained decomposition, the target it decomposes and how.

  Method-agnostic: `scores`, `active`, `masks` and `apply` ask the method.
  Components come in groups: a group of components spans the leaves
  `groups[g]` (APD: one group `''` over every leaf; SPD: a group per
  factored product). A method's own analyses answer here too (`EXTRAS`:
  APD's `attributions(x)`, `topk_mask(x)`; SPD's `causal_importances(x)`).
  `metrics` holds `evaluation_error` where the final evaluation failed.
  """
  target: Target
  method: Any                     # a `methods.base.Method`
  plan: Any                       # how the library computed it (derived)
  components: Any                 # the method's trained parameters
  metrics: dict[str, Any]
  history: list[dict]
  sample_fn: Any = None           # the sampler it was trained on (not saved)

  def __repr__(self) -> str:
    shapes = {n: tuple(w.shape) for n, w in self.target.weights.items()}
    shown = {k: v for k, v in self.metrics.items()
             if isinstance(v, (int, float))}
    failed = self.metrics.get("evaluation_error")
    return (f"Decomposition({type(self.method).__name__}, C="
            f"{self.method.n_components}, leaves={shapes}, "
            f"steps={len(self.history) and self.history[-1]['step']}, "
            f"metrics={ {k: round(v, 6) for k, v in shown.items()} }"
            + (f", evaluation_error={failed!r}" if failed else "") + ")")

  def __getattr__(self, name: str):
    """The method's own analyses (`method.EXTRAS`) as `result.<name>(x)`."""
    if name.startswith("_") or name == "method":
      raise AttributeError(name)
    method = self.__dict__.get("method")
    if name in getattr(method, "EXTRAS", ()):
      return functools.partial(getattr(method, name), self)
    raise AttributeError(
        f"{type(self).__name__} of {type(method).__name__} has no {name!r}"
        f" (its method's own analyses: "
        f"{list(getattr(method, 'EXTRAS', ()))})")

  def _sampler(self, sample_fn):
    sample_fn = sample_fn or self.sample_fn
    if sample_fn is None:
      raise ValueError("give sample_fn (a loaded decomposition does not "
                       "keep the sampler it was trained on)")
    return sample_fn

  def summary(self, sample_fn: SampleFn | None = None, *,
              key: Array | None = None, batch_size: int = 1024,
              n_batches: int = 4) -> summary_lib.Summary:
    """Per component on fresh examples from `sample_fn` (default the
    training sampler): how often it is active, its mean score when active
    (`method.SCORE`), its norm and effective rank per leaf, dead or always
    on; and the totals (faithfulness, reconstruction, L0: the run's final
    metrics, or, with another `sample_fn`, evaluated on it).
    `print(result.summary().table())`; see `analysis.summary`."""
    key = jax.random.PRNGKey(1) if key is None else key
    final = self.metrics if sample_fn is None and all(
        k in self.metrics for k in self.method.METRICS) else None
    return summary_lib.summarize(self, self._sampler(sample_fn), key,
                                 batch_size=batch_size, n_batches=n_batches,
                                 totals=final)

  def top_inputs(self, sample_fn: SampleFn | None = None, *, k: int = 8,
                 key: Array | None = None, batch_size: int = 1024,
                 n_batches: int = 4, max_ties: int = 64,
                 max_bytes: int = summary_lib.MAX_BYTES
                 ) -> list[summary_lib.TopInputs]:
    """Per alive component, the `k` fresh examples on which its score is
    highest, with the reconstruction loss of switching it off on each
    (ties of the score broken by that loss among up to `max_ties`),
    computed in passes whose outputs fit in `max_bytes`; see
    `analysis.summary.top_inputs`."""
    key = jax.random.PRNGKey(2) if key is None else key
    return summary_lib.top_inputs(self, self._sampler(sample_fn), key, k=k,
                                  batch_size=batch_size,
                                  n_batches=n_batches, max_ties=max_ties,
                                  max_bytes=max_bytes)

  @property
  def component_weights(self) -> dict[str, Array]:
    """`{leaf name: P [C, i, o]}`."""
    return comp_lib.component_weights(self.components)

  @property
  def groups(self) -> dict[str, tuple[str, ...]]:
    """`{group: the leaves its components span}`."""
    return self.method.groups(self)

  def scores(self, x: Array) -> dict[str, Array]:
    """`{group: [B, (T,) C_g]}`: each component's score on the batch `x`
    (`method.SCORE_NAME`: APD's squared attribution, SPD's causal
    importance)."""
    return self.method.scores(self, x)

  def active(self, x: Array, batch: bool = False) -> dict[str, Array]:
    """`{group: bool [B, (T,) C_g]}`: where the method counts a component
    as active, per example (APD: attribution above the threshold batch
    top-k had on the evaluation batches; SPD: `G > threshold`).
    `batch=True`: as training does on this batch (APD: its batch top-k,
    which depends on every example of `x`)."""
    return self.method.active(self, x, batch=batch)

  def masks(self, x: Array, batch: bool = False) -> dict[str, Array]:
    """`{group: [B, (T,) C_g]}`: the masks of the method's minimality pass
    on `x` (APD: top-k, per example unless `batch`; SPD: `G`)."""
    return self.method.masks(self, x, batch=batch)

  def apply(self, x: Array, mask: Any = None) -> Array:
    """The target's output with each component's weight scaled per example
    by `mask` (`{group: [B, (T,) C_g]}`; all components at 1 if None)."""
    if mask is None:
      return _full_apply(self.target, self.components, x)
    return self.method.masked_apply(self, mask, x)


@jax.jit
def _full_apply(target, comps, x):
  """All components on: one batched pass with `Σ_c P_c`."""
  return target.batch(x, comp_lib.summed_weights(
      comp_lib.component_weights(comps)))[0]


# -- building blocks -----------------------------------------------------------


def make_target(apply_fn: ApplyFn, params: Any, include: str, *,
                has_aux: bool = False, log: bool = True,
                sample_fn: SampleFn | None = None,
                compute_dtype: Any = "float32") -> Target:
  """The target with the leaves matched by the regex `include` named for
  decomposition (logged with their shapes). A leaf of more than 2 axes is
  decomposed as the matrix its product contracts (`target.matrix_axes`,
  which traces `apply_fn` on an example of `sample_fn`, then required).
  Floating leaves narrower than `compute_dtype` are cast up to it
  (`Training.compute_dtype`; None keeps them)."""
  given = target_lib.floating_dtypes(params)
  params = target_lib.upcast(params, compute_dtype)
  if given != target_lib.floating_dtypes(params):
    logging.info("the target's params (%s) are cast up to %s for the "
                 "decomposition (Training.compute_dtype)",
                 ", ".join(sorted(given)), compute_dtype)
  names = selection.select_leaves(params, include)
  rows = None
  if any(np.ndim(w) > 2 for w in
         selection.get_leaves(params, names).values()):
    if sample_fn is None:
      raise ValueError("a leaf of more than 2 axes is decomposed as the "
                       "matrix its product contracts: give sample_fn")
    x = jax.eval_shape(lambda k: sample_fn(k, 1), jax.random.PRNGKey(0))
    rows = target_lib.matrix_axes(apply_fn, params, names, x)
  target = Target(apply_fn, params, names, has_aux, rows)
  if log:
    shapes = ", ".join(
        f"{n} {tuple(w.shape)}" + (f" as {tuple(target.weights[n].shape)}"
                                   if w.ndim > 2 else "")
        for n, w in selection.get_leaves(params, names).items())
    train.progress_line("include=%r matched %d leaves: %s", include,
                        len(names), shapes)
  return target


def component_counts(method: Any) -> list[int]:
  """The distinct C of `method.n_components` (an int, or `(leaf, C)` pairs),
  ascending."""
  C = method.n_components
  return sorted({v for _, v in C} if isinstance(C, tuple) else {C})


def check_inputs(method: Any, target: Target, sample_fn: SampleFn,
                 training: Training, mesh: jax.sharding.Mesh | None = None
                 ) -> None:
  """Checks the mesh sizes, that the target's params are finite (every
  floating leaf, decomposed or not), the sampler and the method against the
  target (abstractly; nothing is compiled)."""
  if mesh is not None:
    for c in component_counts(method):
      sharding.check_sizes(mesh, batch_size=training.batch_size,
                           n_components=c)
  target_lib.check_finite(target.params)
  check_sampler(sample_fn, training.batch_size)
  method.check(target, sample_fn, training.batch_size)


def run_keys(seed: int) -> tuple[Array, Array, Array]:
  """`(init, data, eval)` keys of the run with `seed`."""
  init_key, data_key, eval_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  return init_key, data_key, eval_key


def optimizer(method: Any, training: Training):
  """The run's optax optimiser: the method's gradient transform, then
  `training`'s optimiser on its schedule (warm-up: the method's default
  unless `training` sets one)."""
  return training.make_optimizer(method.gradient_transform(),
                                 default_warmup=method.WARMUP_FRAC)


def init_state(method: Any, target: Target, training: Training, *,
               seed: int | None = None, mesh: jax.sharding.Mesh | None = None,
               sample_fn: SampleFn | None = None) -> TrainState:
  """Step 0 of the run with `seed` (default `training.seed`): the method's
  initial parameters and the optimiser state, drawn directly into their
  shards over `mesh` where the method's init is traceable. `sample_fn`
  gives the example shape a method may need (SPD does). A method with an
  `init_state(key, target, params, sample_fn, batch_size)` gets that
  state beside its parameters (replicated over `mesh`)."""
  init_key = run_keys(training.seed if seed is None else seed)[0]
  opt = optimizer(method, training)

  def own_state(params):
    init = getattr(method, "init_state", None)
    return None if init is None else init(
        jax.random.fold_in(init_key, 1), target, params, sample_fn,
        training.batch_size)

  if mesh is None:
    params = method.init_params(init_key, target, sample_fn)
    return TrainState.create(params, opt, own_state(params))
  if method.init_traceable:
    init = lambda k: method.init_params(k, target, sample_fn)  # noqa: E731
    shardings = sharding.components(mesh, jax.eval_shape(init, init_key))
    params = jax.jit(init, out_shardings=shardings)(
        sharding.put(init_key, sharding.replicated(mesh)))
  else:  # concrete on the host, then split
    params = method.init_params(init_key, target, sample_fn)
    params = sharding.put(params, sharding.components(mesh, params))
  state = sharding.put(own_state(params), sharding.replicated(mesh))
  return sharding.init(lambda p, s: TrainState.create(p, opt, s),
                       lambda s: sharding.train_state(mesh, s, opt), params,
                       state)


def make_train_step(method: Any, plan: Any, target: Target,
                    sample_fn: SampleFn, training: Training,
                    mesh: jax.sharding.Mesh | None = None):
  """`train_step(state, key, hypers=None) -> (state, metrics)`, pure (jit
  it, or give it to `fit`); see `training.train.make_train_step`."""
  return train.make_train_step(method, plan, target, sample_fn,
                               training.batch_size,
                               optimizer(method, training), mesh,
                               steps=training.steps)


def evaluate(result: Decomposition, sample_fn: SampleFn, key: Array, *,
             batch_size: int, n_batches: int) -> dict[str, Any]:
  """The method's final metrics over `n_batches` fresh batches."""
  return result.method.evaluate(result, sample_fn, key,
                                batch_size=batch_size, n_batches=n_batches)


def split_options(method: Any, training: Training | None,
                  options: dict[str, Any]) -> tuple[Any, Training]:
  """`method` and `training`, with keyword `options` as `Training` fields
  when no `training` object is given (beside one they are refused: it
  would be ambiguous which value wins)."""
  if method is None or not dataclasses.is_dataclass(method):
    raise ValueError(f"give method=apd_jax.APD(...) or apd_jax.SPD(...) "
                     f"(a method object), got {method!r}")
  if not options:
    return method, Training() if training is None else training
  t_names = {f.name for f in dataclasses.fields(Training)}
  m_names = {f.name for f in dataclasses.fields(method)}
  foreign = sorted(set(options) - t_names)
  if foreign:
    where = [f"{k} (a field of {type(method).__name__}: set it on the method "
             f"object)" if k in m_names else k for k in foreign]
    raise ValueError(f"unknown options {where}; keywords of decompose are "
                     f"apd_jax.Training fields")
  if training is not None:
    raise ValueError(f"options {sorted(options)} beside training=: set them "
                     f"on the Training object (training.replace(...))")
  return method, Training(**options)


# -- the composition -----------------------------------------------------------


def decompose(apply_fn: ApplyFn, params: Any, sample_fn: SampleFn, *,
              include: str, method: Any = None,
              training: Training | None = None, has_aux: bool = False,
              **options) -> Decomposition:
  """Decomposes the leaves of `params` matched by `include` into components.

  Args:
    apply_fn: `apply_fn(params, x_batch) -> y_batch` (or `(y, acts)` with
      `has_aux`), any pure JAX function; a Flax `model.apply` works as is.
    params: the target's params pytree θ* (for Flax linen, the whole
      `variables` dict).
    sample_fn: `sample_fn(key, batch_size) -> x_batch`, jittable (JAX, not
      numpy: it is traced once and compiled into the step).
    include: regex searched in `jax.tree_util.keystr` of each leaf's path;
      the matched leaves are decomposed (a leaf of more than 2 axes, such
      as an attention kernel, as the matrix its product contracts).
    method: what is optimised, e.g. `APD(n_components=..., topk=...)` or
      `SPD(...)`.
    training: how (`Training(...)`); default `Training()`.
    has_aux: `apply_fn` returns `(y, {name: activation})`.
    **options: a shortcut for `training=Training(**options)` (refused
      beside `training`).

  Returns:
    A `Decomposition`. With `training.checkpoint_dir` the run checkpoints
    there and resumes from the latest checkpoint found. An error in the
    final evaluation, after training, is logged and recorded in
    `metrics['evaluation_error']` instead of raised (`finish`).
  """
  method, training = split_options(method, training, options)
  if training.cpu_tweaks:
    cpu.apply_tweaks()
  mesh = sharding.make_mesh() if training.mesh is None else training.mesh
  target = make_target(apply_fn, params, include, has_aux=has_aux,
                       log=training.progress, sample_fn=sample_fn,
                       compute_dtype=training.compute_dtype)
  check_inputs(method, target, sample_fn, training, mesh)
  state = init_state(method, target, training, mesh=mesh,
                     sample_fn=sample_fn)
  plan = method.plan(target, sample_fn, training.batch_size,
                     state.components)
  def step(state, args):    # the target an argument: no constant copy of it
    key, own = args
    return make_train_step(method, plan, own, sample_fn, training, mesh)(
        state, key)

  shardings = sharding.train_state(mesh, state, optimizer(method, training))
  checkpoints, history = None, []
  if training.checkpoint_dir:
    checkpoints = ckpt_lib.Checkpoints(training.checkpoint_dir,
                                       every=training.checkpoint_every,
                                       keep=training.keep_checkpoints)
    if checkpoints.latest_step() is not None:
      state, history = checkpoints.restore(state, shardings)
      logging.info("resumed from the checkpoint at step %d in %s",
                   int(state.step), checkpoints.directory)
  _, data_key, eval_key = run_keys(training.seed)
  t0 = time.perf_counter()
  try:
    state, history = fit(
        state, step, sharding.put((data_key, target),
                                  sharding.replicated(mesh)),
        steps=training.steps, log_every=training.log_every,
        print_every=training.print_every,
        callback=training.callback, state_shardings=shardings,
        checkpoints=checkpoints, history=history,
        progress=training.progress)
  finally:
    if checkpoints is not None:
      checkpoints.close()
  comps = jax.tree.map(jnp.asarray, sharding.gather(state.components))
  return finish(method, plan, target, method.project(comps), history,
                sample_fn, eval_key, training,
                wall_seconds=time.perf_counter() - t0)


def finish(method, plan, target, params, history, sample_fn, eval_key,
           training: Training, **extra) -> Decomposition:
  """The `Decomposition` of trained `params`, with its final metrics.

  An error in the evaluation loses nothing trained: it is logged with its
  traceback and the decomposition comes back with it recorded as
  `metrics['evaluation_error']` (its type and message) beside the run's
  own entries, and without the method's metrics."""
  result = Decomposition(target, method, plan, params, {}, history,
                         sample_fn)
  try:
    final = evaluate(result, sample_fn, eval_key,
                     batch_size=training.batch_size,
                     n_batches=training.eval_batches)
  except Exception as e:  # noqa: BLE001 - kept in the result, logged
    logging.exception("the final evaluation failed after training; the "
                      "trained decomposition is kept (metrics"
                      "['evaluation_error'])")
    final = {"evaluation_error": f"{type(e).__name__}: {e}"}
  final.update(steps=training.steps, **extra,
               **{k: getattr(plan, k) for k in ("attribution_mode",
                                                "attribution_contract")
                  if hasattr(plan, k)})
  return dataclasses.replace(result, metrics=final)
