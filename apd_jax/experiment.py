"""`train_and_evaluate(config, workdir)`: the command line's whole job.

The only code that reads a `ConfigDict`. It trains (or loads) the target,
decomposes it through the public `decompose` API on the configured device
mesh, and writes to `workdir` (files from process 0 only):

  config.json            the config as run
  target_params.msgpack  the target's params (flax serialization)
  metrics.jsonl          one line per log: step, losses, L0, steps/s
  events.out.tfevents.*  TensorBoard: the logged scalars and the figures
  components.npz         the factors U, V of every decomposed leaf
  summary.json           final metrics (faithfulness, L0, dead components;
                         MMCS/ML2R for TMS; feature recovery and
                         scrubbing losses for residual MLPs)
  components.png         TMS: target weights beside each component;
                         gated functions: each component's neurons,
                         coloured by the function they serve
  contributions.png      residual MLP: neuron contributions per feature,
                         target vs best component
  scrubbing.png          residual MLP: scrubbed / anti-scrubbed losses
  analysis.npz           residual MLP: the analysis arrays
  losses.png             the loss terms over training
  checkpoints/           orbax checkpoints of the training state (every
                         process); a run started again in the same workdir
                         resumes from the latest
  decomposition/         the finished decomposition (`export.load` it)

Only process 0 writes files. A config whose `sweep` section lists values is
run by `sweep_experiment.train_and_evaluate` instead.
"""

from __future__ import annotations

import json
import os
import time

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from apd_jax import analysis
from apd_jax import api
from apd_jax import checkpoint
from apd_jax import distributed
from apd_jax import export
from apd_jax import metrics as metrics_lib
from apd_jax import plotting
from apd_jax import runlog
from apd_jax import sharding
from apd_jax.models import gated
from apd_jax.models import resid_mlp
from apd_jax.models import tms


def default_config() -> ml_collections.ConfigDict:
  """Defaults shared by every config; each field is a `decompose` argument
  unless noted."""
  c = ml_collections.ConfigDict()
  c.seed = 0                   # seeds target training and the decomposition
  c.target = ml_collections.ConfigDict(dict(
      name="tms",              # target model (models/<name>.py)
      path="",                 # load params from this msgpack file if set
      n_features=5, n_hidden=2, n_hidden_layers=0,
      feature_probability=0.05,
      steps=5000, batch_size=1024, lr=5e-3, weight_decay=0.01))
  c.include = "W"              # regex over leaf keystr: leaves to decompose
  c.n_components = 5           # C
  c.rank = ml_collections.config_dict.placeholder(int)  # m; None: min(i, o)
  c.topk = 0.211               # batch top-k: mean active per example
  c.batch_topk = True
  c.steps = 20_000
  c.batch_size = 2048
  c.lr = 3e-2
  c.lr_schedule = "constant"   # 'constant' or 'cosine'
  c.warmup_frac = 0.05         # linear warm-up from 0 over this fraction
  c.faithfulness_coeff = 1.0
  c.minimality_coeff = 1.0
  c.simplicity_coeff = 0.7
  c.hidden_act_coeff = 0.0
  c.hidden_acts = "post_relu"       # regex: activations it reconstructs
  c.schatten_p = 1.0
  c.attribution_type = "gradient"   # 'gradient', 'ablation', 'activation'
  c.attribution_point = "target"    # 'target' (θ*) or 'components' (Σ P)
  c.attribution_mode = "auto"       # 'auto', 'forward', 'reverse', 'lazy'
  c.attribution_projections = 0     # > 0: estimate from k output projections
  c.recon = "mse"                   # 'mse' or 'kl'
  c.sparsity = "topk"               # 'topk' or 'lp'
  c.lp_p = 1.0
  c.init = "random"                 # 'random' or 'svd'
  c.init_gain = 1.0
  c.unit_norm_matrices = False
  c.eval_batches = 10
  c.log_every = 1000
  c.checkpoint_every = 5000    # a multiple of log_every; 0: only at the end
  c.keep_checkpoints = 3       # the newest checkpoints kept
  c.mesh = ml_collections.ConfigDict(dict(  # not a decompose argument
      data=-1,                 # devices splitting the batch; -1: the rest
      component=1))            # devices splitting C (factors, Adam moments)
  # Sweep: every combination of the listed values trains in one program
  # (empty: not swept); see apd_jax/sweep.py.
  c.sweep = ml_collections.ConfigDict(dict(
      seed=(), topk=(), faithfulness_coeff=(), minimality_coeff=(),
      simplicity_coeff=(), hidden_act_coeff=(), schatten_p=(), lr=(),
      select="topk_recon",     # the metric that picks the best run
      select_mode="min",       # 'min' or 'max'
      mmcs_threshold=0.99))    # TMS: seeds at MMCS >= this count as success
  return c


DECOMPOSE_ARGS = (
    "include", "n_components", "rank", "topk", "batch_topk", "steps",
    "batch_size", "lr", "lr_schedule", "warmup_frac", "seed",
    "faithfulness_coeff", "minimality_coeff", "simplicity_coeff",
    "hidden_act_coeff", "hidden_acts", "schatten_p", "attribution_type",
    "attribution_point", "attribution_mode", "attribution_projections",
    "recon", "sparsity", "lp_p", "init", "init_gain", "unit_norm_matrices",
    "eval_batches", "log_every", "checkpoint_every", "keep_checkpoints")


def tms_variants(c: ml_collections.ConfigDict, arg: str | None) -> set:
  """The TMS configs' shared options; `arg`: comma-separated 'identity' (an
  identity hidden layer between W and Wᵀ, decomposed too), 'quick' (a 2k-step
  smoke run). Returns the set of args, for config-specific ones."""
  c.sweep.select = "mmcs"        # best run of a sweep: highest MMCS
  c.sweep.select_mode = "max"
  args = set((arg or "").split(","))
  if "identity" in args:
    c.target.n_hidden_layers = 1
    c.include = r"\['W'\]|\['hidden'\]"
  if "quick" in args:
    c.steps = 2000
    c.log_every = 500
  return args


def residual_config(n_layers: int, args: str | None):
  """Shared settings of the residual-MLP configs; `args`: comma-separated
  'rank1' (rank-1 components), 'quick' (a short smoke run)."""
  args = set((args or "").split(","))
  c = default_config()
  c.target = ml_collections.ConfigDict(dict(
      name="resid_mlp",
      path="",                   # load params from this msgpack file if set
      n_features=100, d_resid=1000,
      d_mlp=51 if n_layers == 3 else 50,   # split evenly over the layers
      n_layers=n_layers,
      feature_probability=0.01,
      steps=5000, batch_size=2048, lr=3e-3, weight_decay=0.01))
  c.include = "W_in|W_out"       # every layer's MLP; not embeddings
  c.rank = None                  # full rank min(i, o), as the reference
  c.batch_size = 2048
  c.topk = 1.28
  c.lr = 1e-3
  c.lr_schedule = "cosine"
  c.warmup_frac = 0.01
  c.schatten_p = 0.9
  c.hidden_act_coeff = 1.0
  c.hidden_acts = "post_relu"    # the MLPs' post-ReLU activations
  c.init_gain = 2.0
  if "rank1" in args:
    c.rank = 1
  if "quick" in args:
    c.steps = 1000
    c.log_every = 250
    c.target.steps = 1000
  return c


def _decompose_args(config: ml_collections.ConfigDict) -> dict:
  """`decompose`'s arguments from the config; `checkpoint_every` rounded up
  to a multiple of `log_every` (checkpoints are taken at log steps)."""
  args = {k: config[k] for k in DECOMPOSE_ARGS}
  every, log = args["checkpoint_every"], args["log_every"]
  if every > 0 and log > 0:
    args["checkpoint_every"] = -(-every // log) * log
  return args


def make_target(t: ml_collections.ConfigDict, seed: int, workdir: str):
  """`(apply_fn, params, sample_fn, has_aux)` of the configured target;
  trains and saves it unless `t.path` names saved params."""
  if t.name == "gated":  # built, not trained
    apply_fn, params, sample_fn = gated.make(t, seed)
    _save_params(workdir, params)
    return apply_fn, params, sample_fn, False
  if t.name not in TARGETS:
    raise ValueError(f"unknown target {t.name!r}; known: "
                     f"{sorted([*TARGETS, 'gated'])}")
  module, dims, train_args = TARGETS[t.name]
  dims = {k: t[k] for k in dims}
  if t.path:
    template = module.init(jax.random.PRNGKey(0), **dims)
    with open(t.path, "rb") as f:
      params = flax.serialization.from_bytes(template, f.read())
    logging.info("loaded target params from %s", t.path)
  else:
    t0 = time.perf_counter()
    params, losses = module.train(jax.random.PRNGKey(seed), **dims,
                                  **{k: t[k] for k in train_args})
    logging.info("trained target: loss %.4g -> %.4g in %.1fs",
                 float(losses[0]), float(losses[-1]), time.perf_counter() - t0)
  _save_params(workdir, params)
  sample_fn = module.sampler(n_features=t.n_features,
                            feature_probability=t.feature_probability)
  return module.apply, params, sample_fn, t.name == "resid_mlp"


# name -> (module, architecture fields, training fields) of `config.target`
TARGETS = {
    "tms": (tms, ("n_features", "n_hidden", "n_hidden_layers"),
            ("feature_probability", "steps", "batch_size", "lr",
             "weight_decay")),
    "resid_mlp": (resid_mlp, ("n_features", "d_resid", "d_mlp", "n_layers"),
                  ("feature_probability", "steps", "batch_size", "lr",
                   "weight_decay")),
}


def _resume_logs(workdir: str, config: ml_collections.ConfigDict):
  """On a restart: the config that reloads the saved target, and the
  metrics log cut back to the latest checkpoint. Returns the config."""
  step = checkpoint.latest_step(os.path.join(workdir, "checkpoints"))
  log_path = os.path.join(workdir, "metrics.jsonl")
  if step is None:
    if distributed.is_main():
      open(log_path, "w").close()
    return config
  logging.info("workdir %s has a checkpoint at step %d: resuming", workdir,
               step)
  saved = os.path.join(workdir, "target_params.msgpack")
  if not config.target.path and os.path.exists(saved):
    config = ml_collections.ConfigDict(config.to_dict())
    config.target.path = saved
  if distributed.is_main() and os.path.exists(log_path):
    with open(log_path) as f:
      kept = [line for line in f if json.loads(line)["step"] <= step]
    with open(log_path, "w") as f:
      f.writelines(kept)
  return config


def _save_params(workdir, params):
  if runlog.is_writer():
    with open(os.path.join(workdir, "target_params.msgpack"), "wb") as f:
      f.write(flax.serialization.to_bytes(params))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains the target, decomposes it, writes the outputs; returns summary.

  Resumes from the latest checkpoint in `workdir/checkpoints` if there is
  one, so a run started again after an interruption ends where an
  uninterrupted one would.
  """
  os.makedirs(workdir, exist_ok=True)
  run_config = config
  config = _resume_logs(workdir, config)
  if runlog.is_writer():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(run_config.to_json_best_effort(indent=2))
  apply_fn, params, sample_fn, has_aux = make_target(
      config.target, config.seed, workdir)
  with runlog.RunLog(workdir, append=True) as log:
    t0 = time.perf_counter()
    result = api.decompose(
        apply_fn, params, sample_fn, callback=log.write, has_aux=has_aux,
        mesh=sharding.make_mesh(**config.mesh),
        checkpoint_dir=os.path.join(workdir, "checkpoints"),
        **_decompose_args(config))
    summary = summarize(result, total_seconds=time.perf_counter() - t0)
    export.save(result, os.path.join(workdir, "decomposition"),
                config=json.loads(run_config.to_json_best_effort()))
    return write_outputs(config, workdir, result, sample_fn, summary, log)


def summarize(result: api.Decomposition, **extra) -> dict:
  """The final metrics, `extra`, and the median training rate."""
  rates = [r["steps_per_s"] for r in result.history[1:]]  # first compiles
  steps = result.metrics["steps"]
  return dict(result.metrics, **extra,
              steps_per_s=float(np.median(rates)) if rates
              else steps / result.metrics["wall_seconds"])


def write_outputs(config: ml_collections.ConfigDict, workdir: str,
                  result: api.Decomposition, sample_fn, summary: dict,
                  log: runlog.RunLog) -> dict:
  """Writes the factors, the target's analyses and figures (also to `log`'s
  TensorBoard file), `summary.json` and the loss curves.

  Returns `summary` with the analyses' metrics (on process 0; elsewhere
  nothing is written and `summary` comes back as it is).
  """
  if not runlog.is_writer():
    return summary
  summary = dict(summary)
  np.savez(os.path.join(workdir, "components.npz"),
           **{f"U{n}": np.asarray(u) for n, u in result.components.U.items()},
           **{f"V{n}": np.asarray(v) for n, v in result.components.V.items()})
  if config.target.name == "tms":
    summary.update(_report_tms(config, result, workdir))
  elif config.target.name == "resid_mlp":
    summary.update(_report_residual(config, result, sample_fn, workdir))
  elif config.target.name == "gated":
    summary.update(_report_gated(result, workdir))
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  plotting.plot_history(result.history, os.path.join(workdir, "losses.png"))
  log.figures(result.metrics["steps"], workdir)
  return summary


def _report_tms(config, result, workdir) -> dict:
  """MMCS and ML2R of `W`, and the component figure."""
  W = result.target.params["W"]
  P = result.component_weights["['W']"]
  out = dict(mmcs=float(metrics_lib.mmcs(W, P)),
             ml2r=float(metrics_lib.ml2r(W, P)))
  plotting.plot_columns(
      W, P, os.path.join(workdir, "components.png"),
      title=f"TMS {config.target.n_features}-{config.target.n_hidden}: "
            f"MMCS {out['mmcs']:.3f}, ML2R {out['ml2r']:.3f}")
  return out


def _report_residual(config, result, sample_fn, workdir) -> dict:
  """Feature recovery and scrubbing (`analysis.py`), with their figures."""
  summary, d = analysis.evaluate_residual(
      result, sample_fn, jax.random.PRNGKey(config.seed + 1),
      labels_fn=resid_mlp.labels, batch_size=config.batch_size)
  n = len(d["best"])
  plotting.plot_contributions(
      d["kappa"], d["comp_kappa"][d["best"], np.arange(n)], d["cosine"],
      os.path.join(workdir, "contributions.png"))
  plotting.plot_scrubbing(d["losses"], os.path.join(workdir, "scrubbing.png"))
  np.savez(os.path.join(workdir, "analysis.npz"), kappa=d["kappa"],
           best=d["best"], cosine=d["cosine"],
           **{f"loss_{k}": v for k, v in d["losses"].items()})
  return summary


def _report_gated(result, workdir) -> dict:
  """Per-function recovery (`analysis.function_recovery`) and the figure of
  each component's neurons coloured by function."""
  params = result.target.params
  fns = gated.neuron_functions(params)
  P = result.component_weights
  scores = analysis.function_recovery(result.target.weights, P, fns)
  best = np.asarray(jnp.max(scores, axis=1))
  plotting.plot_function_components(
      analysis.neuron_norms(P, len(fns)), np.concatenate(fns), scores,
      os.path.join(workdir, "components.png"))
  return dict(function_recovery=[float(v) for v in best],
              mean_function_recovery=float(best.mean()),
              best_component_per_function=[
                  int(c) for c in np.asarray(jnp.argmax(scores, axis=1))])
