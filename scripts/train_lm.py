r"""Trains the transformer target on the standard library's text.

  python scripts/train_lm.py --config=configs/lm_target.py \
      --workdir=runs/lm_target

Writes to `workdir`: `target_params.msgpack` (flax serialization of the
params), `config.json`, `metrics.jsonl` (one line per log), `summary.json`
(held-out loss in nats and bits per byte, training time, tokens/s, the
corpus: Python version, files and bytes per split) and `losses.png`.
"""

import json
import os
import platform
import time

import flax.serialization
import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from apd_jax.analysis import plotting
from apd_jax.models import lm_target
from apd_jax.models import text
from apd_jax.models.transformer import TransformerConfig

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/lm_target.py",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> dict:
  """Trains, writes the outputs; returns the summary."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  model = TransformerConfig(**config.model)
  corpus = text.stdlib_corpus(**config.corpus, seed=config.seed)
  t0 = time.perf_counter()
  params, log = lm_target.train(
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
      heldout_bits_per_byte=log[-1]["heldout"] / 0.6931471805599453,
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
                   f"({held[-1]['heldout'] / 0.6931:.3f} bits/byte)",))
  return plotting.save(fig, path)


def main(argv):
  del argv
  print(json.dumps(run(FLAGS.config, FLAGS.workdir), indent=2))


if __name__ == "__main__":
  app.run(main)
