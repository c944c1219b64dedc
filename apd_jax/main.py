r"""Command line: decompose a target model as a config file says.

  python -m apd_jax.main --config=configs/tms_5_2.py --workdir=/tmp/tms_5_2 \
      --config.steps=2000

A config whose `sweep` section lists values runs a sweep (every combination
in one program), e.g. `--config.sweep.seed=0,1,2,3 --config.sweep.topk=0.2,0.3`.

On several hosts (a TPU pod slice, a SLURM job) run the same command on
every host with `--multihost`; elsewhere give the coordinator explicitly:

  python -m apd_jax.main ... --coordinator_address=10.0.0.1:1234 \
      --num_processes=2 --process_id=0

Started again with the same workdir, a run resumes from its latest
checkpoint (refusing if the config differs; `--fresh` starts again). On
SIGTERM it checkpoints and exits with status 143.
"""

import difflib
import importlib.util
import json
import logging as py_logging
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from apd_jax import methods
from apd_jax.cli import experiment
from apd_jax.cli import sweep_experiment
from apd_jax.training import distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs.")
flags.DEFINE_bool("fresh", False,
                  "Delete a previous run's checkpoints, logs and config in "
                  "--workdir and start again (by default a run resumes, and "
                  "refuses a workdir whose run had other settings).")
flags.DEFINE_bool("multihost", False,
                  "Join the other processes with jax.distributed.initialize "
                  "(auto-detected on TPU pods and SLURM).")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 (implies --multihost).")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record) -> bool:
  """Drops orbax's INFO lines (several per checkpoint) from the log."""
  return (record.levelno >= py_logging.WARNING
          or "orbax" not in record.pathname)


def _load_config(argv: list[str]):
  """The config that `--config=PATH[:ARG]` in `argv` names, or None."""
  for a in argv:
    if a.startswith("--config="):
      path, _, arg = a[len("--config="):].partition(":")
      spec = importlib.util.spec_from_file_location("_config", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      return module.get_config(arg or None)
  return None


def unknown_option(argv: list[str]) -> str | None:
  """One line for the first `--config.a.b=...` of `argv` that the config
  does not hold: the section, its valid names, the nearest ones."""
  try:
    config = _load_config(argv)
  except Exception:  # noqa: BLE001 - the parser's own error is shown then
    return None
  if config is None:
    return None
  for a in argv:
    if not a.startswith("--config."):
      continue
    path = a[len("--config."):].partition("=")[0].split(".")
    section, where = config, "config"
    for name in path:
      if not hasattr(section, "keys") or name not in section:
        valid = sorted(section.keys()) if hasattr(section, "keys") else []
        near = difflib.get_close_matches(name, valid, n=3)
        if where == "config.method":   # the method's namespace
          where = (f"config.method ({methods.get(section.name).__name__}'s "
                   f"options)")
        return (f"--config.{'.'.join(path)}: {where} has no option "
                f"{name!r}"
                + (f"; did you mean {' or '.join(near)}?" if near else "")
                + f". Valid: {', '.join(valid)}")
      section, where = section[name], f"{where}.{name}"
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with an option the config does not hold refused
  in one line that names it and lists the valid ones."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    message = unknown_option(argv) or f"{type(e).__name__}: {e}"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  if FLAGS.multihost or FLAGS.coordinator_address:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
  if not distributed.is_main():
    logging.set_verbosity(logging.WARNING)  # process 0 logs
  logging.info("JAX %s, process %d of %d, devices %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  if FLAGS.fresh:
    experiment.start_afresh(FLAGS.workdir)
  run = (sweep_experiment.train_and_evaluate
         if sweep_experiment.is_sweep(FLAGS.config)
         else experiment.train_and_evaluate)
  try:
    summary = run(FLAGS.config, FLAGS.workdir)
  except distributed.Preempted as e:
    logging.warning("%s", e)
    sys.exit(143)
  if distributed.is_main():
    shown = {k: v for k, v in summary.items() if k != "components"}
    print(json.dumps(shown, indent=2))  # components: summary.json, .md


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
