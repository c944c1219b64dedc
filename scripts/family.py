r"""A method over the family of targets no config ships (`apd_jax.cli.family`).

  nice -n 19 python scripts/family.py --method=spd --seeds=5 \
      --workdir=$HOME/apd_runs/family/spd_paper            # paper settings
  python scripts/family.py --method=spd --seeds=5 --workdir=... \
      --set=steps=10000 --set=method.importance_coeff=1e-3   # other settings
  python scripts/family.py --method=spd --seeds=2 --quick --workdir=/tmp/f

Each member trains as one sweep over seeds (seed n: its own target and
decomposition) in `<workdir>/<member>`, resumable; the table of success
fractions per member (`scoreboard.md`, `.csv`, `.json`) is rewritten after
each member.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from apd_jax.cli import config
from apd_jax.cli import family
from apd_jax.cli import scoreboard
from apd_jax.cli import sweep_report

FLAGS = flags.FLAGS
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                       "configs")


def define_flags():
  flags.DEFINE_string("workdir", None, "Where the members and table go.")
  flags.DEFINE_string("method", "spd", "Whose paper configs to scale.")
  flags.DEFINE_integer("seeds", 5, "Seeds 0 .. seeds-1 per member.")
  flags.DEFINE_list("only", [], "Members to run (default all).")
  flags.DEFINE_multi_string("set", [], "KEY=VALUE config values on every "
                            "member (a Python literal), e.g. steps=10000.")
  flags.DEFINE_bool("quick", False, "A few steps of each (smoke run).")
  flags.DEFINE_integer("checkpoint_every", None, "Steps between "
                       "checkpoints, overriding the configs'.")
  flags.DEFINE_integer("seeds_per_sweep", None, "Train each member's "
                       "seeds in sweeps of this many (default: all in "
                       "one), each finished on its own.")
  flags.DEFINE_string("results", None, "Folder for each finished member's "
                      "row and, under pieces/, each finished sweep's "
                      "record (read back where its workdir is gone).")
  flags.DEFINE_bool("status", False, "Print where each member's sweeps "
                    "stand and train nothing.")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  try:
    overrides = config.parse_sets(FLAGS.set)
  except ValueError as e:
    raise app.UsageError(f"--set {e}") from e
  if FLAGS.status:
    rows = scoreboard.progress(
        FLAGS.workdir, CONFIGS, FLAGS.only, FLAGS.seeds,
        per_sweep=FLAGS.seeds_per_sweep, results_dir=FLAGS.results,
        entries=family.family(FLAGS.method, CONFIGS, overrides))
    print(sweep_report.markdown(rows, ["entry", "seeds", "state"]))
    return
  family.run(FLAGS.workdir, CONFIGS, FLAGS.method, FLAGS.seeds,
             names=FLAGS.only, quick=FLAGS.quick, overrides=overrides,
             checkpoint_every=FLAGS.checkpoint_every,
             per_sweep=FLAGS.seeds_per_sweep, results_dir=FLAGS.results,
             command=" ".join(["python scripts/family.py"] + sys.argv[1:]))
  with open(os.path.join(FLAGS.workdir, "scoreboard.md")) as f:
    print(f.read())


if __name__ == "__main__":
  define_flags()
  app.run(main)
