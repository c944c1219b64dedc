r"""The reproduction scoreboard: every toy config of APD and SPD over seeds.

  python scripts/scoreboard.py --workdir=runs/scoreboard            # all
  python scripts/scoreboard.py --workdir=runs/scoreboard \
      --only=tms_5_2,spd_tms_5_2 --seeds=10
  python scripts/scoreboard.py --workdir=/tmp/sb --quick --seeds=2  # smoke
  python scripts/scoreboard.py --workdir=runs/variants --seeds=3 \
      --only=vpd_tms_40_10 --set=method.ci_fn=scalar --tag=scalar
  python scripts/scoreboard.py --workdir=... --seeds_per_sweep=1 \
      --results=... --status             # where a campaign stands

Each entry trains as one sweep over seeds (seed n: the target and the
decomposition with seed n) in `<workdir>/<entry>`; a finished entry is read
back, an interrupted one resumes from its checkpoints. After each entry the
tables are rewritten: `scoreboard.md`, `.csv`, `.json` (see
`apd_jax.cli.scoreboard` for the criteria and the failure signs).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from apd_jax.cli import config
from apd_jax.cli import results
from apd_jax.cli import scoreboard
from apd_jax.cli import sweep_report

FLAGS = flags.FLAGS
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                       "configs")


def define_flags():
  flags.DEFINE_string("workdir", None, "Where the entries and tables go.")
  flags.DEFINE_integer("seeds", 10, "Seeds 0 .. seeds-1 per entry.")
  flags.DEFINE_list("only", [], "Entries to run (default all): "
                    + ",".join(e.name for e in scoreboard.ENTRIES))
  flags.DEFINE_bool("quick", False, "A few steps of each (smoke run).")
  flags.DEFINE_integer("checkpoint_every", None, "Steps between "
                       "checkpoints, overriding the configs' (a campaign "
                       "that may be stopped at any time).")
  flags.DEFINE_string("results", None, "Folder for each finished entry's "
                      "row, and under pieces/ each finished sweep's record "
                      "(read back where its workdir is gone); when it is "
                      "docs/results, the README's results table is then "
                      "regenerated from it.")
  flags.DEFINE_multi_string("set", [], "KEY=VALUE config values on every "
                            "entry (a Python literal), with --tag.")
  flags.DEFINE_string("tag", None, "With --set: the variant's name; its "
                      "entries are `<entry>@<tag>`.")
  flags.DEFINE_bool("status", False, "Print where each sweep of the "
                    "selected entries stands (finished, read back from its "
                    "record, its newest checkpoint, not started) and train "
                    "nothing.")
  flags.DEFINE_integer("seeds_per_sweep", None, "Train each entry's seeds "
                       "in sweeps of this many (default: all in one), each "
                       "finished on its own: campaign pieces that end "
                       "between interruptions.")
  flags.DEFINE_bool("figures", True, "Each run's figures (--nofigures: "
                    "the tables and summaries only).")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  command = " ".join(["python scripts/scoreboard.py"] + sys.argv[1:])
  names, entries = FLAGS.only, scoreboard.ENTRIES
  if FLAGS.set or FLAGS.tag:
    if not (FLAGS.set and FLAGS.tag):
      raise app.UsageError("--set and --tag go together: the values, and "
                           "the name of the variant they make")
    try:
      sets = config.parse_sets(FLAGS.set)
      entries = scoreboard.with_settings(
          scoreboard.select(names), FLAGS.tag, sets)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    names = []
  if FLAGS.status:
    rows = scoreboard.progress(FLAGS.workdir, CONFIGS, names, FLAGS.seeds,
                               per_sweep=FLAGS.seeds_per_sweep,
                               results_dir=FLAGS.results, entries=entries)
    print(sweep_report.markdown(rows, ["entry", "seeds", "state"]))
    return
  scoreboard.run(FLAGS.workdir, CONFIGS, names, FLAGS.seeds, FLAGS.quick,
                 checkpoint_every=FLAGS.checkpoint_every,
                 results_dir=FLAGS.results, command=command,
                 figures=FLAGS.figures, per_sweep=FLAGS.seeds_per_sweep,
                 entries=entries)
  if FLAGS.results:
    docs = os.path.join(CONFIGS, "..", "docs", "results")
    if os.path.realpath(FLAGS.results) == os.path.realpath(docs):
      results.update_readme(os.path.join(CONFIGS, "..", "README.md"), docs)
    else:   # another folder holds some rows only: the README keeps its own
      print(f"Finished entries' rows are in {FLAGS.results}; the README's "
            "table is generated from docs/results (copy them there, then "
            "python -m apd_jax.cli.results).")
  with open(os.path.join(FLAGS.workdir, "scoreboard.md")) as f:
    print(f.read())


if __name__ == "__main__":
  define_flags()
  app.run(main)
