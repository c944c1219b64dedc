r"""Per-device memory and FLOPs of SPD on a 1B and an 8B language model over
8, 32 and 256 simulated devices; see `apd_jax/cli/plan_scale.py`.

  python scripts/plan_scale.py                                # ~10 min
  python scripts/plan_scale.py --shapes=1b --scopes=layer --devices=8
  python scripts/plan_scale.py --batch_size=64 --seq_len=1024
"""

from absl import app

from apd_jax.cli import plan_scale

if __name__ == "__main__":
  plan_scale.define_flags()
  app.run(plan_scale.main)
