r"""Wall time of R TMS 5-2 decompositions: one sweep program vs R `decompose`
calls one after another (same seeds, the paper's settings).

  python scripts/sweep_benchmark.py --runs=16 --steps=20000

Each way runs in a fresh process (nothing compiled by one helps the other)
and its wall time includes compilation and the final evaluation. Prints both,
their ratio, the sweep's time in units of one sequential run (R would mean no
gain) and the largest MMCS difference between a sweep run and its sequential
twin.
`--cpu_devices=N` splits the host CPU into N devices, over which the sweep
shards its runs.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 16, "Number of runs (seeds 0 .. runs-1).")
flags.DEFINE_integer("steps", 20_000, "Steps per run.")
flags.DEFINE_integer("cpu_devices", 0, "If > 0, host CPU devices to use.")
flags.DEFINE_enum("arm", "both", ["both", "sweep", "sequential"],
                  "'both' runs each of the other two in a subprocess.")


def main(argv):
  del argv
  if FLAGS.arm == "both":
    out = {}
    for arm in ("sweep", "sequential"):
      cmd = [sys.executable, __file__, f"--arm={arm}", f"--runs={FLAGS.runs}",
             f"--steps={FLAGS.steps}", f"--cpu_devices={FLAGS.cpu_devices}"]
      run = subprocess.run(cmd, capture_output=True, text=True, check=True)
      out[arm] = json.loads(run.stdout.strip().splitlines()[-1])
      print(f"{arm}: {out[arm]['seconds']:.1f} s", flush=True)
    t_sweep, t_seq = out["sweep"]["seconds"], out["sequential"]["seconds"]
    diff = max(abs(a - b) for a, b in zip(out["sweep"]["mmcs"],
                                          out["sequential"]["mmcs"],
                                          strict=True))
    one = t_seq / FLAGS.runs
    devices = out["sweep"]["devices"]
    print(f"{FLAGS.runs} runs x {FLAGS.steps} steps on {devices}: one "
          f"sequential run {one:.1f} s; sweep of {FLAGS.runs} = "
          f"{t_sweep / one:.2f} single runs; sequential / sweep = "
          f"{t_seq / t_sweep:.2f}x; max |MMCS sweep - sequential| = "
          f"{diff:.2e}")
    return
  if FLAGS.cpu_devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_"
                               f"force_host_platform_device_count="
                               f"{FLAGS.cpu_devices}")
  import jax  # noqa: PLC0415 - after XLA_FLAGS

  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
  from apd_jax import decompose  # noqa: PLC0415
  from apd_jax.cli import config as cli_config  # noqa: PLC0415
  from apd_jax.cli import experiment  # noqa: PLC0415
  from apd_jax.core import metrics  # noqa: PLC0415
  from apd_jax.engine.sweep import decompose_sweep  # noqa: PLC0415
  from configs import tms_5_2  # noqa: PLC0415

  config = tms_5_2.get_config()
  config.steps = FLAGS.steps
  method, training = cli_config.method_and_training(config)
  kw = dict(include=config.include, method=method)
  apply_fn, params, sample_fn, _ = experiment.make_target(
      config.target, 0, tempfile.mkdtemp())
  seeds = list(range(FLAGS.runs))

  def mmcs(d):
    return float(metrics.mmcs(params["W"], d.component_weights["['W']"]))

  t0 = time.perf_counter()
  if FLAGS.arm == "sweep":
    runs = decompose_sweep(apply_fn, params, sample_fn, training=training,
                           sweep={"seed": seeds}, **kw).decompositions
  else:
    runs = [decompose(apply_fn, params, sample_fn,
                      training=training.replace(seed=s), **kw)
            for s in seeds]
  seconds = time.perf_counter() - t0
  print(json.dumps(dict(seconds=seconds, mmcs=[mmcs(d) for d in runs],
                        devices=str(jax.devices()))))


if __name__ == "__main__":
  app.run(main)
