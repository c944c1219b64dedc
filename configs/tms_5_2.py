r"""APD on TMS 5-2 with the paper's settings.

  python -m apd_jax.main --config=configs/tms_5_2.py --workdir=/tmp/tms_5_2

Paper: MMCS 0.998, ML2R 0.893 (20k steps at batch 2048; attributions taken at
the sum of components, the paper's adjustment for this model).
Pass `configs/tms_5_2.py:quick` for a 2k-step smoke run, `:identity` for the
variant with an identity hidden layer (where the paper's APD failed), or
both (`:identity,quick`); `:untied` decomposes `W`'s two uses as two
matrices; `:sweep` trains 72 runs in one program (top-k ×
simplicity coefficient × 8 seeds of the decomposition, all on the seed-0
target):

  python -m apd_jax.main --config=configs/tms_5_2.py:sweep \
      --workdir=/tmp/tms_5_2_sweep
"""

from apd_jax.cli import config as common
from apd_jax.targets import tms


def get_config(arg=None):
  args = common.parse_arg(arg, identity=False, quick=False, untied=False,
                          sweep=False)
  c = common.default_config()
  c.target.update(n_features=5, n_hidden=2, steps=5000, batch_size=1024)
  c.method.n_components = 5
  c.method.rank = 3      # the reference's min(n_features, n_hidden) + 1
  c.method.topk = 0.211
  c.steps = 20_000
  c.batch_size = 2048
  c.lr = 3e-2
  c.lr_schedule = "constant"
  c.warmup_frac = 0.05
  c.method.minimality_coeff = 1.0
  c.method.simplicity_coeff = 0.7
  c.method.schatten_p = 1.0
  c.method.attribution_point = "components"
  tms.variants(c, identity=args.identity, quick=args.quick,
               untied=args.untied)
  if args.sweep:
    c.sweep.seed = tuple(range(8))
    c.sweep.topk = (0.17, 0.211, 0.25)
    c.sweep.simplicity_coeff = (0.35, 0.7, 1.4)
  return c
