r"""The language-model frontier from finished runs (`apd_jax.cli.frontier`).

  python scripts/frontier.py --runs=runs/spd_lm,runs/vpd_lm \
      --out=docs/results/lm_frontier

Each run folder (or sweep folder: each of its runs) is a point: active
subcomponents per position as a fraction of all, against the held-out
cross-entropy of the masked and active-only passes minus the target's.
Writes `<out>.json`, `.md` (a table) and `.png` (the figure), and prints
each method's sparsest run within 0.1 nats/byte.
"""

from absl import app
from absl import flags

from apd_jax.cli import frontier

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "Run or sweep folders of LM decompositions.")
flags.DEFINE_string("out", None, "Output path without extension.")
flags.mark_flags_as_required(["runs", "out"])


def main(argv):
  del argv
  rows = frontier.collect(FLAGS.runs)
  for line in frontier.in_words(frontier.write(rows, FLAGS.out)):
    print(line)


if __name__ == "__main__":
  app.run(main)
