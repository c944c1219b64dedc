"""`train_and_evaluate(config, workdir)`: the command line's whole job.

The only code that reads a `ConfigDict`. It trains (or loads) the target,
decomposes it through the public `decompose` API, and writes to `workdir`:

  config.json            the config as run
  target_params.msgpack  the target's params (flax serialization)
  metrics.jsonl          one line per log: step, losses, L0, steps/s
  events.out.tfevents.*  TensorBoard: the logged scalars, the component figure
  components.npz         the factors U, V of every decomposed leaf
  summary.json           final metrics (MMCS, ML2R, faithfulness, ...)
  components.png         target weights beside each component
  losses.png             the loss terms over training
"""

from __future__ import annotations

import os
import time

import flax.serialization
import jax
import ml_collections
import numpy as np
from absl import logging

from apd_jax import api
from apd_jax import outputs
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
  c.schatten_p = 1.0
  c.attribution_type = "gradient"   # 'gradient', 'ablation', 'activation'
  c.attribution_point = "target"    # 'target' (θ*) or 'components' (Σ P)
  c.attribution_mode = "auto"       # 'auto', 'forward', 'reverse'
  c.recon = "mse"                   # 'mse' or 'kl'
  c.sparsity = "topk"               # 'topk' or 'lp'
  c.lp_p = 1.0
  c.init = "random"                 # 'random' or 'svd'
  c.init_gain = 1.0
  c.unit_norm_matrices = False
  c.eval_batches = 10
  c.log_every = 1000
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
    "hidden_act_coeff", "schatten_p", "attribution_type", "attribution_point",
    "attribution_mode", "recon", "sparsity", "lp_p", "init", "init_gain",
    "unit_norm_matrices", "eval_batches", "log_every")


def make_target(t: ml_collections.ConfigDict, seed: int, workdir: str):
  """`(apply_fn, params, sample_fn)` of the configured target; trains and
  saves it unless `t.path` names saved params."""
  if t.name != "tms":
    raise ValueError(f"unknown target {t.name!r}; known: 'tms'")
  dims = dict(n_features=t.n_features, n_hidden=t.n_hidden,
              n_hidden_layers=t.n_hidden_layers)
  if t.path:
    template = tms.init(jax.random.PRNGKey(0), **dims)
    with open(t.path, "rb") as f:
      params = flax.serialization.from_bytes(template, f.read())
    logging.info("loaded target params from %s", t.path)
  else:
    t0 = time.perf_counter()
    params, losses = tms.train(
        jax.random.PRNGKey(seed), **dims,
        feature_probability=t.feature_probability, steps=t.steps,
        batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay)
    logging.info("trained target: loss %.4g -> %.4g in %.1fs",
                 float(losses[0]), float(losses[-1]), time.perf_counter() - t0)
  if outputs.is_writer():
    with open(os.path.join(workdir, "target_params.msgpack"), "wb") as f:
      f.write(flax.serialization.to_bytes(params))
  sample_fn = tms.sampler(n_features=t.n_features,
                          feature_probability=t.feature_probability)
  return tms.apply, params, sample_fn


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains the target, decomposes it, writes the outputs; returns summary."""
  os.makedirs(workdir, exist_ok=True)
  if outputs.is_writer():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  apply_fn, params, sample_fn = make_target(config.target, config.seed,
                                            workdir)
  with outputs.RunLog(workdir) as log:
    t0 = time.perf_counter()
    result = api.decompose(
        apply_fn, params, sample_fn, callback=log.write,
        **{k: config[k] for k in DECOMPOSE_ARGS})
    summary = summarize(config, params, result,
                        total_seconds=time.perf_counter() - t0)
    write_outputs(config, workdir, params, result, summary, log)
  return summary


def summarize(config: ml_collections.ConfigDict, params, result,
              **extra) -> dict:
  """Final metrics, the training rate, and MMCS/ML2R for TMS targets."""
  rates = [r["steps_per_s"] for r in result.history[1:]]  # first compiles
  summary = dict(result.metrics, **extra,
                 steps_per_s=float(np.median(rates)) if rates
                 else config.steps / result.metrics["wall_seconds"])
  if config.target.name == "tms":
    summary.update(outputs.feature_metrics(params, result))
  return summary


def write_outputs(config: ml_collections.ConfigDict, workdir: str, params,
                  result, summary: dict, log: outputs.RunLog) -> None:
  """The factors, summary and figures of one decomposition."""
  title = ""
  if config.target.name == "tms":
    title = (f"TMS {config.target.n_features}-{config.target.n_hidden}: "
             f"MMCS {summary['mmcs']:.3f}, ML2R {summary['ml2r']:.3f}")
  outputs.write_decomposition(workdir, result, summary, title=title, log=log)
