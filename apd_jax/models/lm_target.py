"""Trains the transformer on the standard library's text, and scores it.

    params, log = train(config, corpus, steps=3000, batch_size=32, lr=1e-3)
    heldout_loss(params, config, corpus.heldout)     # nats per byte
    train_and_write(ml_config, workdir)   # the script's run: files + summary

AdamW (weight decay 0.01 on matrices) on a linear warm-up then cosine
schedule; every `log_every` steps compiled into one `lax.scan`, then a
progress line with the training loss and, every `eval_every` steps, the
held-out loss: the mean next-byte cross-entropy over consecutive windows
covering the held-out text once (nats per byte; bits = nats / ln 2).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from typing import Callable

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from apd_jax.analysis import plotting
from apd_jax.models import text
from apd_jax.models import transformer
from apd_jax.models.transformer import TransformerConfig

Array = jax.Array


def optimizer(lr: float, steps: int, warmup: int,
              weight_decay: float = 0.01) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps,
                                                end_value=lr * 0.1)
  decay_matrices = lambda p: jax.tree.map(lambda a: a.ndim >= 2, p)  # noqa: E731
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=weight_decay,
                                 mask=decay_matrices))


def heldout_loss(params: dict, config: TransformerConfig, data: np.ndarray,
                 *, batch_size: int = 64) -> float:
  """Mean next-byte cross-entropy (nats per byte) over windows of
  `context + 1` bytes covering `data` once."""
  tiles = text.tiles(data, config.context + 1)
  loss = jax.jit(lambda p, w: transformer.next_token_loss(p, w, config))
  total, n = 0.0, 0
  for i in range(0, len(tiles), batch_size):
    w = tiles[i:i + batch_size]
    total += float(loss(params, w)) * len(w)
    n += len(w)
  return total / n


def _say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def train(config: TransformerConfig, corpus: text.Corpus, *, steps: int,
          batch_size: int, lr: float, seed: int = 0, warmup: int = 200,
          log_every: int = 100, eval_every: int = 500,
          say: Callable[[str], None] = _say) -> tuple[dict, list[dict]]:
  """`(params, log)`: the model trained for `steps` on windows of
  `corpus.train`; `log` has one record per `log_every` steps (step, train
  loss, elapsed seconds, and `heldout` every `eval_every` steps and at the
  end)."""
  if steps % log_every:
    raise ValueError(f"steps={steps} is not a multiple of "
                     f"log_every={log_every}")
  init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
  params = transformer.init(init_key, config)
  opt = optimizer(lr, steps, min(warmup, steps // 2))
  sample = text.sampler(corpus.train, config.context + 1)

  def step(carry, i):
    p, s = carry
    window = sample(jax.random.fold_in(data_key, i), batch_size)
    value, grads = jax.value_and_grad(transformer.next_token_loss)(
        p, window, config)
    updates, s = opt.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), value

  @jax.jit
  def chunk(p, s, start):
    (p, s), values = jax.lax.scan(step, (p, s),
                                  start + jnp.arange(log_every))
    return p, s, jnp.mean(values)

  state, log, t0 = opt.init(params), [], time.perf_counter()
  for start in range(0, steps, log_every):
    params, state, value = chunk(params, state, start)
    done = start + log_every
    record = dict(step=done, train=float(value),
                  elapsed_s=time.perf_counter() - t0)
    if done % eval_every == 0 or done >= steps:
      record["heldout"] = heldout_loss(params, config, corpus.heldout)
    log.append(record)
    rate = done * batch_size * config.context / max(record["elapsed_s"], 1e-9)
    held = (f"  held-out {record['heldout']:.4f}" if "heldout" in record
            else "")
    say(f"step {done}/{steps}  train {record['train']:.4f} nats/byte{held}"
        f"  {rate:.0f} tokens/s")
    if not math.isfinite(record["train"]):
      raise FloatingPointError(f"non-finite training loss at step {done}")
  return params, log


def train_and_write(config, workdir: str) -> dict:
  """Trains on an `ml_collections` config (configs/lm_target.py) and writes
  to `workdir`: target_params.msgpack, config.json, metrics.jsonl,
  summary.json and losses.png; returns the summary."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  model = TransformerConfig(**config.model)
  corpus = text.stdlib_corpus(**config.corpus, seed=config.seed)
  t0 = time.perf_counter()
  params, log = train(
      model, corpus, steps=config.steps, batch_size=config.batch_size,
      lr=config.lr, seed=config.seed, warmup=config.warmup,
      log_every=config.log_every, eval_every=config.eval_every)
  seconds = time.perf_counter() - t0
  with open(os.path.join(workdir, "target_params.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(params))
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in log)
  n_params = sum(a.size for a in jax.tree.leaves(params))
  tokens = config.steps * config.batch_size * model.context
  summary = dict(
      heldout_nats_per_byte=log[-1]["heldout"],
      heldout_bits_per_byte=log[-1]["heldout"] / math.log(2),
      train_nats_per_byte=log[-1]["train"], train_seconds=seconds,
      tokens_per_s=tokens / seconds, n_params=int(n_params),
      python=platform.python_version(), corpus_root=corpus.root,
      train_files=len(corpus.train_files), train_bytes=int(corpus.train.size),
      heldout_files=len(corpus.heldout_files),
      heldout_bytes=int(corpus.heldout.size))
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  plot_log(log, os.path.join(workdir, "losses.png"))
  return summary


def plot_log(log, path):
  """Training and held-out loss (nats per byte) against the step."""
  fig, ax = plotting.plt.subplots(figsize=(7, 4.2))
  ax.plot([r["step"] for r in log], [r["train"] for r in log],
          label="training windows (mean over each log interval)")
  held = [r for r in log if "heldout" in r]
  ax.plot([r["step"] for r in held], [r["heldout"] for r in held], "o-",
          label="held-out files (all of their text)")
  ax.set_xlabel("training step")
  ax.set_ylabel("next-byte cross-entropy (nats / byte)")
  ax.set_yscale("log")
  ax.legend(fontsize=8)
  plotting.integer_ticks(ax, y=False)
  plotting.titled(fig, "Transformer target: next-byte loss while training",
                  (f"final held-out {held[-1]['heldout']:.3f} nats/byte "
                   f"({held[-1]['heldout'] / math.log(2):.3f} bits/byte)",))
  return plotting.save(fig, path)
