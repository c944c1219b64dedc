r"""Runs a config over several seeds and tabulates the paper's TMS metrics.

  python scripts/reproduce.py --config=configs/tms_5_2.py --seeds=10 \
      --workdir=runs/tms_5_2_seeds

Each seed gets its own workdir (`seed_<n>`, with the usual outputs); the table
(MMCS, ML2R, faithfulness, L0, dead components, wall time, steps/s) is printed
and written to `<workdir>/seeds.json`.
"""

import json
import os
import statistics

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from apd_jax.cli import experiment

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.")
flags.DEFINE_string("workdir", None, "Parent directory of the seed runs.")
flags.DEFINE_integer("seeds", 5, "Seeds 0 .. seeds-1.")
flags.DEFINE_float("mmcs_threshold", 0.99, "MMCS counted as a success.")
flags.mark_flags_as_required(["config", "workdir"])


def main(_):
  logging.set_verbosity(logging.INFO)
  rows = []
  for seed in range(FLAGS.seeds):
    config = FLAGS.config.copy_and_resolve_references()
    config.seed = seed
    s = experiment.train_and_evaluate(
        config, os.path.join(FLAGS.workdir, f"seed_{seed}"))
    rows.append(dict(seed=seed, **{k: s[k] for k in (
        "mmcs", "ml2r", "faithfulness", "topk_recon", "l0",
        "dead_components", "wall_seconds", "steps_per_s")}))
    print("seed {seed}: MMCS {mmcs:.4f}  ML2R {ml2r:.4f}  "
          "faith {faithfulness:.2e}  L0 {l0:.3f}  dead {dead_components}  "
          "{wall_seconds:.1f}s  {steps_per_s:.0f} steps/s".format(**rows[-1]),
          flush=True)
  ok = [r for r in rows if r["mmcs"] >= FLAGS.mmcs_threshold]
  for key in ("mmcs", "ml2r"):
    vals = [r[key] for r in rows]
    print(f"{key}: mean {statistics.mean(vals):.4f} "
          f"sd {statistics.pstdev(vals):.4f} min {min(vals):.4f}")
  print(f"{len(ok)}/{len(rows)} seeds reach MMCS >= {FLAGS.mmcs_threshold}")
  with open(os.path.join(FLAGS.workdir, "seeds.json"), "w") as f:
    json.dump(rows, f, indent=2)


if __name__ == "__main__":
  app.run(main)
