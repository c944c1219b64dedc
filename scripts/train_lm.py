r"""Trains the transformer target on the standard library's text.

  python scripts/train_lm.py --config=configs/lm_target.py \
      --workdir=runs/lm_target

Runs `apd_jax.cli.train_lm.train_and_write`, which writes to `workdir`:
`target_params.msgpack` (flax serialization of the params), `config.json`,
`metrics.jsonl` (one line per log), `summary.json` (held-out loss in nats
and bits per byte, training time, tokens/s, the corpus: Python version,
files and bytes per split) and `losses.png`; prints the summary.
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from apd_jax.cli import train_lm

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/lm_target.py",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  summary = train_lm.train_and_write(FLAGS.config, FLAGS.workdir)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
