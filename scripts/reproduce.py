r"""Runs a TMS config over several seeds and tabulates the paper's metrics.

  python scripts/reproduce.py --config=configs/tms_5_2.py --seeds=10 \
      --workdir=runs/tms_5_2_seeds
  python scripts/reproduce.py --config=configs/spd_tms_5_2.py --seeds=10 \
      --workdir=runs/spd_tms_5_2_seeds --mmcs_threshold=0.999

Seed n trains the target and the decomposition with seed n, in its own
workdir (`seed_<n>`, with the usual outputs; a finished seed is read back,
an interrupted one resumes). The table (MMCS, ML2R, faithfulness, the
method's reconstruction and L0, dead or alive components, wall time,
steps/s) is printed and written to `<workdir>/seeds.json`; a seed succeeds
when MMCS >= --mmcs_threshold and ML2R lies in [--ml2r_min, --ml2r_max].
"""

import json
import os
import statistics

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from apd_jax import methods
from apd_jax.cli import experiment

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.")
flags.DEFINE_string("workdir", None, "Parent directory of the seed runs.")
flags.DEFINE_integer("seeds", 5, "Seeds 0 .. seeds-1.")
flags.DEFINE_integer("first_seed", 0, "The first seed.")
flags.DEFINE_float("mmcs_threshold", 0.99, "MMCS counted as a success.")
flags.DEFINE_float("ml2r_min", 0.0, "Smallest ML2R counted as a success.")
flags.DEFINE_float("ml2r_max", float("inf"),
                   "Largest ML2R counted as a success.")
flags.mark_flags_as_required(["config", "workdir"])

def run_seed(config, seed: int) -> dict:
  workdir = os.path.join(FLAGS.workdir, f"seed_{seed}")
  done = os.path.join(workdir, "summary.json")
  if os.path.exists(done):
    with open(done) as f:
      s = json.load(f)
    if s.get("steps") == config.steps:
      return s
  config = config.copy_and_resolve_references()
  config.seed = seed
  return experiment.train_and_evaluate(config, workdir)


def main(_):
  logging.set_verbosity(logging.INFO)
  config = FLAGS.config
  method = methods.get(config.method.name)
  keys = ("mmcs", "ml2r") + tuple(method.METRICS) + (
      "wall_seconds", "steps_per_s")
  rows = []
  for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
    s = run_seed(config, seed)
    row = dict(seed=seed, **{k: s[k] for k in keys})
    row["success"] = bool(row["mmcs"] >= FLAGS.mmcs_threshold
                          and FLAGS.ml2r_min <= row["ml2r"] <= FLAGS.ml2r_max)
    rows.append(row)
    print(f"seed {seed}: " + "  ".join(
        f"{k} {v:.4g}" for k, v in row.items() if k != "seed"), flush=True)
  for key in ("mmcs", "ml2r"):
    vals = [r[key] for r in rows]
    print(f"{key}: mean {statistics.mean(vals):.4f} "
          f"sd {statistics.pstdev(vals):.4f} min {min(vals):.4f}")
  wall = sum(r["wall_seconds"] for r in rows)
  print(f"{sum(r['success'] for r in rows)}/{len(rows)} seeds succeed "
        f"(MMCS >= {FLAGS.mmcs_threshold}, ML2R in [{FLAGS.ml2r_min}, "
        f"{FLAGS.ml2r_max}]); {wall:.0f} s of training")
  with open(os.path.join(FLAGS.workdir, "seeds.json"), "w") as f:
    json.dump(rows, f, indent=2)


if __name__ == "__main__":
  app.run(main)
