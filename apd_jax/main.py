r"""Command line: decompose a target model as a config file says.

  python -m apd_jax.main --config=configs/tms_5_2.py --workdir=/tmp/tms_5_2 \
      --config.steps=2000

A config whose `sweep` section lists values runs a sweep (every combination
in one program), e.g. `--config.sweep.seed=0,1,2,3 --config.sweep.topk=0.2,0.3`.
"""

import json

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from apd_jax import experiment
from apd_jax import sweep_experiment

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.info("JAX %s on %s", jax.__version__, jax.devices())
  run = (sweep_experiment.train_and_evaluate
         if sweep_experiment.is_sweep(FLAGS.config)
         else experiment.train_and_evaluate)
  summary = run(FLAGS.config, FLAGS.workdir)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
