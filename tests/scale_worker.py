"""One tiny TMS decomposition in its own process, for the scale-out tests.

    python tests/scale_worker.py OUT.npz --devices=8 --data=4 --component=2
    python tests/scale_worker.py OUT.npz --devices=4 --coordinator=... \
        --num_processes=2 --process_id=0

Simulates `--devices` CPU devices (per process), optionally joins other
processes through `jax.distributed`, runs `decompose` on a fixed TMS 5-2
target on a `data × component` mesh and writes the history and the final
factors to OUT.npz (process 0 only).
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse():
  p = argparse.ArgumentParser()
  p.add_argument("out")
  p.add_argument("--devices", type=int, default=1)
  p.add_argument("--data", type=int, default=-1)
  p.add_argument("--component", type=int, default=1)
  p.add_argument("--coordinator")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--checkpoint_dir")
  p.add_argument("--checkpoint_every", type=int, default=0)
  p.add_argument("--init", default="random")
  return p.parse_args()


def main():
  args = parse()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count="
                             f"{args.devices}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, ROOT)
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from apd_jax import api  # noqa: PLC0415
  from apd_jax import distributed  # noqa: PLC0415
  from apd_jax import sharding  # noqa: PLC0415
  from apd_jax.models import tms  # noqa: PLC0415

  if args.coordinator:
    distributed.initialize(args.coordinator, args.num_processes,
                           args.process_id)
  params, _ = tms.train(jax.random.PRNGKey(0), n_features=5, n_hidden=2,
                        steps=300)
  mesh = sharding.make_mesh(args.data, args.component)
  result = api.decompose(
      tms.apply, params, tms.sampler(n_features=5, feature_probability=0.05),
      include="W", n_components=8, topk=0.5, rank=3, steps=args.steps,
      batch_size=64, lr=3e-2, warmup_frac=0.05, simplicity_coeff=0.7,
      attribution_point="components", init=args.init, eval_batches=2,
      log_every=10, mesh=mesh, checkpoint_dir=args.checkpoint_dir,
      checkpoint_every=args.checkpoint_every)
  if distributed.is_main():
    np.savez(args.out, U=np.asarray(result.components.U["['W']"]),
             V=np.asarray(result.components.V["['W']"]),
             history=json.dumps(result.history),
             metrics=json.dumps(result.metrics),
             devices=jax.device_count(), processes=jax.process_count())


if __name__ == "__main__":
  main()
