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

  python scripts/sweep_benchmark.py --arm=per_step --config=tms_40_10 \
      --runs=16 --steps=20

times the compiled step alone, for any config in `configs/`: `--steps`
steps of one run, then of the R-run sweep (the step vmapped over runs), in
one process, after compiling each, best of 3; prints both and the sweep's
cost in single-run steps (R would mean vmapping saves nothing).
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
flags.DEFINE_enum("arm", "both", ["both", "sweep", "sequential", "per_step"],
                  "'both' runs the sweep and the sequential arm, each in a "
                  "subprocess; 'per_step' times the compiled steps.")
flags.DEFINE_string("config", "tms_5_2", "per_step: a module of configs/.")


def per_step() -> None:
  """One run's step against the vmapped R-run step (see the module)."""
  import importlib  # noqa: PLC0415

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
  from apd_jax.cli import config as cli_config  # noqa: PLC0415
  from apd_jax.cli import experiment  # noqa: PLC0415
  from apd_jax.engine import api  # noqa: PLC0415
  from apd_jax.training import cpu  # noqa: PLC0415
  from apd_jax.training import train  # noqa: PLC0415

  cpu.apply_tweaks()
  config = importlib.import_module("configs." + FLAGS.config).get_config()
  method, training = cli_config.method_and_training(config)
  training = training.replace(progress=False)
  apply_fn, params, sample_fn, has_aux = experiment.make_target(
      config.target, 0, tempfile.mkdtemp())
  target = api.make_target(apply_fn, params, config.include,
                           has_aux=has_aux, log=False, sample_fn=sample_fn)
  R = FLAGS.runs
  static = method.bound([dict(seed=s) for s in range(R)])
  states = [api.init_state(method, target, training, seed=s,
                           sample_fn=sample_fn) for s in range(R)]
  plan = static.plan(target, sample_fn, training.batch_size,
                     states[0].components)
  step = api.make_train_step(static, plan, target, sample_fn, training)
  hypers = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), static.hypers(
      **{n: getattr(method, n) for n in method.SWEEPABLE}))
  keys = [api.run_keys(s)[1] for s in range(R)]

  def stack(*xs):
    return jnp.stack(xs)

  def best_of_3(run, state, args):
    state, m = run(state, args, FLAGS.steps)   # compiles
    jax.block_until_ready(m)
    times = []
    for _ in range(3):
      t = time.perf_counter()
      state, m = run(state, args, FLAGS.steps)
      jax.block_until_ready(m)
      times.append((time.perf_counter() - t) / FLAGS.steps)
    return min(times)

  stacked = jax.tree.map(stack, *states)   # before run 0's state is donated
  one = best_of_3(train.make_runner(lambda s, a: step(s, *a)), states[0],
                  (keys[0], hypers))
  sweep = best_of_3(
      train.make_runner(lambda s, a: jax.vmap(step)(s, *a)), stacked,
      (jnp.stack(keys), jax.tree.map(lambda h: jnp.stack([h] * R), hypers)))
  print(f"{FLAGS.config}, {R} runs on {jax.devices()[0].device_kind}: one "
        f"run {one * 1e3:.3f} ms/step, the sweep {sweep * 1e3:.3f} ms/step "
        f"= {sweep / one:.2f} single-run steps ({R * one / sweep:.2f}x "
        f"faster than {R} runs one after another)")


def main(argv):
  del argv
  if FLAGS.arm == "per_step":
    per_step()
    return
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
