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
checkpoint that can be read (refusing if the config differs, but for more
steps where the schedule allows; `--fresh` starts again). On SIGTERM it
checkpoints and exits with status 143.

Every option is checked before anything is trained or written; an error in
the flags, the config or the workdir is one line, `error: ...`, with exit
status 2 (`--traceback` shows the whole traceback).
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
from apd_jax.cli import config as cli_config
from apd_jax.cli import experiment
from apd_jax.cli import sweep_experiment
from apd_jax.cli import workdir as workdirs
from apd_jax.training import distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs.")
flags.DEFINE_bool("fresh", False,
                  "Delete a previous run's outputs in --workdir (checkpoints, "
                  "logs, TensorBoard events, config, summaries, figures; "
                  "not its target) and start again (by default a run "
                  "resumes, and refuses a workdir whose run had other "
                  "settings).")
flags.DEFINE_bool("multihost", False,
                  "Join the other processes with jax.distributed.initialize "
                  "(auto-detected on TPU pods and SLURM).")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 (implies --multihost).")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_bool("traceback", False,
                  "Show the whole traceback of an error in the flags, the "
                  "config or the workdir (by default one line, `error: "
                  "...`, and exit status 2).")
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


def one_line(e: BaseException) -> str:
  """`e`'s message in one line: its first line, then the innermost
  exception's where that says more (a config file's own error, which the
  flags parser wraps with its traceback)."""
  root = e
  while (root.__cause__ or root.__context__) is not None:
    root = root.__cause__ or root.__context__
  first, inner = _first_line(e), _first_line(root)
  return first if inner in first else f"{first.rstrip(':')}: {inner}"


def _first_line(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return lines[0] if lines else type(e).__name__


def parse_error(e: BaseException, argv: list[str]) -> str:
  """The one line for an error in parsing `argv`: an option the config does
  not hold (named, with the valid ones), a config file that cannot be read,
  a bad value or flag."""
  if isinstance(e, (AttributeError, KeyError)):
    return unknown_option(argv) or f"{type(e).__name__}: {e}"
  if isinstance(e, OSError):   # the file's error is its message's last line
    return f"--config: {str(e).strip().splitlines()[-1].strip()}"
  return one_line(e)


def wants_traceback(argv: list[str]) -> bool:
  """Whether `argv` asks for `--traceback` (read before the flags parse)."""
  return any(a == "--traceback" or a.lower() in ("--traceback=true",
                                                  "--traceback=1")
             for a in argv)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with an error in the flags or the config file
  shown in one line (`parse_error`; exit status 2)."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.keys  # noqa: B018 - a config that failed to load raises
    return rest
  except (AttributeError, KeyError, OSError, flags.Error) as e:
    if wants_traceback(argv):
      raise
    print(f"error: {parse_error(e, argv)}", file=sys.stderr)
    sys.exit(2)


def run(config, workdir: str, fresh: bool) -> dict:
  """Checks every option (a `ConfigError`) before anything is trained or
  written (`--fresh`'s deletion included), then runs `config`: a sweep or
  a single run."""
  with cli_config.user_errors():
    sweeping = sweep_experiment.is_sweep(config)
  module = sweep_experiment if sweeping else experiment
  step = module.check_run(config, workdir, fresh=fresh)
  logging.set_verbosity(logging.INFO if distributed.is_main()
                        else logging.WARNING)  # process 0 logs
  logging.info("JAX %s, process %d of %d, devices %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  if fresh:
    workdirs.start_afresh(workdir)
  return module.run_checked(config, workdir, step)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # INFO once the options pass
  logging.get_absl_handler().addFilter(_quiet_orbax)
  if FLAGS.multihost or FLAGS.coordinator_address:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
  try:
    summary = run(FLAGS.config, FLAGS.workdir, FLAGS.fresh)
  except distributed.Preempted as e:
    logging.warning("%s", e)
    sys.exit(143)
  except cli_config.ConfigError as e:
    if FLAGS.traceback:
      raise
    print(f"error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)
  if distributed.is_main():
    shown = {k: v for k, v in summary.items() if k != "components"}
    print(json.dumps(shown, indent=2))  # components: summary.json, .md


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
