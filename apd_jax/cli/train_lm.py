"""The transformer target's training run: a ConfigDict in, files out.

    summary = train_and_write(config, "runs/lm_target")

Reads the `ml_collections` config of `configs/lm_target.py`, trains with
`targets.lm.train` and writes to `workdir`: `target_params.msgpack` (flax
serialization of the params), `config.json`, `metrics.jsonl` (one line per
log record), `summary.json` (held-out loss in nats and bits per byte,
bits = nats / ln 2; training time, tokens/s, the corpus) and `losses.png`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time

import flax.serialization
import jax

from apd_jax.analysis import plotting
from apd_jax.models import text
from apd_jax.models.transformer import TransformerConfig
from apd_jax.targets import lm


def train_and_write(config, workdir: str) -> dict:
  """Trains on `config` (configs/lm_target.py) and writes its files to
  `workdir`; returns the summary."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  model = TransformerConfig(**config.model)
  corpus = text.stdlib_corpus(**config.corpus, seed=config.seed)
  t0 = time.perf_counter()
  params, log = lm.train(
      model, corpus, steps=config.steps, batch_size=config.batch_size,
      lr=config.lr, seed=config.seed, warmup=config.warmup,
      log_every=config.log_every, eval_every=config.eval_every)
  seconds = time.perf_counter() - t0
  with open(os.path.join(workdir, "target_params.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(params))
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in log)
  summary = summarize(log, params, corpus, seconds=seconds,
                      tokens=config.steps * config.batch_size * model.context)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  plot_log(log, os.path.join(workdir, "losses.png"))
  return summary


def summarize(log: list[dict], params: dict, corpus: text.Corpus, *,
              seconds: float, tokens: int) -> dict:
  """The run's summary: the last record's losses (held-out in nats and
  bits per byte), time, tokens/s, the params' size and the corpus."""
  n_params = sum(a.size for a in jax.tree.leaves(params))
  return dict(
      heldout_nats_per_byte=log[-1]["heldout"],
      heldout_bits_per_byte=log[-1]["heldout"] / math.log(2),
      train_nats_per_byte=log[-1]["train"], train_seconds=seconds,
      tokens_per_s=tokens / seconds, n_params=int(n_params),
      python=platform.python_version(), corpus_root=corpus.root,
      train_files=len(corpus.train_files), train_bytes=int(corpus.train.size),
      heldout_files=len(corpus.heldout_files),
      heldout_bytes=int(corpus.heldout.size))


def plot_log(log: list[dict], path: str):
  """Training and held-out loss (nats per byte) against the step, written
  to `path`; returns the figure."""
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
