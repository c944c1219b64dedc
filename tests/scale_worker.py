"""A tiny TMS decomposition, run in the test process or in its own.

    python tests/scale_worker.py OUT --devices=8 --meshes=8x1,4x2
    python tests/scale_worker.py OUT --devices=2 --meshes=2x2 \
        --coordinator=127.0.0.1:PORT --num_processes=2 --process_id=0

As a script it simulates `--devices` CPU devices in this process, optionally
joins other processes through `jax.distributed`, runs `run` once per mesh
`DATAxCOMPONENT` and writes each result to `OUT.<mesh>.npz` (process 0 only).
`--signal_at=STEP:NAME` sends this process SIGKILL or SIGTERM from the log
callback at STEP, mid-run.
"""

import argparse
import functools
import json
import os
import signal
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40


def run(mesh=(1, 1), *, checkpoint_dir=None, checkpoint_every=0,
        callback=None, steps=STEPS, sweep=False):
  """Decomposes a TMS 5-2 target (C=8) for `steps` steps at batch 64 (with
  `sweep`, four runs in one program: U and V stacked, the last run's history
  and metrics).

  Returns:
    `{"U": [C, 2, 3], "V": [C, 3, 5], "history": [...], "metrics": {...}}`.
  """
  import jax
  import numpy as np

  from apd_jax import APD
  from apd_jax import Training
  from apd_jax import decompose
  from apd_jax import decompose_sweep
  from apd_jax.targets import tms
  from apd_jax.training import sharding

  params, _ = tms.train(jax.random.PRNGKey(0), n_features=5, n_hidden=2,
                        steps=300)
  method = APD(n_components=8, topk=0.5, rank=3, simplicity_coeff=0.7,
               attribution_point="components")
  training = Training(
      steps=steps, batch_size=64, lr=3e-2, warmup_frac=0.05, eval_batches=2,
      log_every=10, mesh=None if sweep else sharding.make_mesh(*mesh),
      checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
      callback=callback)
  sample_fn = tms.sampler(n_features=5, feature_probability=0.05)
  if sweep:  # two seeds and two top-k in one program
    r = decompose_sweep(tms.apply, params, sample_fn, include="W",
                        method=method, training=training,
                        sweep=dict(seed=(0, 1), topk=(0.5, 1.0)))
    return dict(U=np.stack([d.components.U["['W']"]
                            for d in r.decompositions]),
                V=np.stack([d.components.V["['W']"]
                            for d in r.decompositions]),
                history=r.decompositions[-1].history,
                metrics=r.decompositions[-1].metrics,
                devices=jax.device_count(), processes=jax.process_count())
  result = decompose(tms.apply, params, sample_fn, include="W",
                     method=method, training=training)
  return dict(U=np.asarray(result.components.U["['W']"]),
              V=np.asarray(result.components.V["['W']"]),
              history=result.history, metrics=result.metrics,
              devices=jax.device_count(), processes=jax.process_count())


@functools.lru_cache(maxsize=2)
def reference(sweep=False):
  """`run()` on this process's first device, computed once per session."""
  return run(sweep=sweep)


def assert_same_run(a, b):
  """Equal losses, components and final metrics up to float sum order."""
  import numpy as np

  assert [r["step"] for r in a["history"]] == [r["step"]
                                               for r in b["history"]]
  for ra, rb in zip(a["history"], b["history"], strict=True):
    for term in ("loss", "faithfulness", "minimality", "simplicity", "l0"):
      np.testing.assert_allclose(ra[term], rb[term], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(a["U"], b["U"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a["V"], b["V"], rtol=1e-5, atol=1e-6)
  for term in ("faithfulness", "topk_recon", "l0"):
    np.testing.assert_allclose(a["metrics"][term], b["metrics"][term],
                               rtol=1e-5, atol=1e-7)


def command(out, *args):
  return [sys.executable, os.path.abspath(__file__), str(out), *args]


def launch(out, *args, timeout=240):
  """Runs this script in a subprocess (killed if it outlives `timeout`)."""
  return subprocess.run(command(out, *args), cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def free_port():
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def save(path, out):
  import numpy as np
  np.savez(path, U=out["U"], V=out["V"], history=json.dumps(out["history"]),
           metrics=json.dumps(out["metrics"]), devices=out["devices"],
           processes=out["processes"])


def load(path):
  import numpy as np
  with np.load(path) as f:
    return dict(U=f["U"], V=f["V"], history=json.loads(str(f["history"])),
                metrics=json.loads(str(f["metrics"])),
                devices=int(f["devices"]), processes=int(f["processes"]))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("out")
  p.add_argument("--devices", type=int, default=1)
  p.add_argument("--meshes", default="1x1")
  p.add_argument("--coordinator")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  p.add_argument("--checkpoint_dir")
  p.add_argument("--checkpoint_every", type=int, default=0)
  p.add_argument("--signal_at", default="")
  p.add_argument("--sweep", action="store_true")
  args = p.parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count="
                             f"{args.devices}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, ROOT)
  from apd_jax.training import distributed

  if args.coordinator:
    distributed.initialize(args.coordinator, args.num_processes,
                           args.process_id)
  callback = None
  if args.signal_at:
    at, name = args.signal_at.split(":")

    def callback(step, records):
      del records
      if step == int(at):
        os.kill(os.getpid(), getattr(signal, name))

  for mesh in args.meshes.split(","):
    shape = tuple(int(n) for n in mesh.split("x"))
    out = run(shape, checkpoint_dir=args.checkpoint_dir,
              checkpoint_every=args.checkpoint_every, callback=callback,
              sweep=args.sweep)
    if distributed.is_main():
      save(f"{args.out}.{mesh}.npz", out)


if __name__ == "__main__":
  main()
