r"""APD on TMS 40-10 with the paper's settings.

  python -m apd_jax.main --config=configs/tms_40_10.py --workdir=/tmp/tms_40_10

Paper: MMCS 0.996, ML2R 0.935 (C = 50, 20k steps at batch 2048).
Pass `configs/tms_40_10.py:quick` for a 2k-step smoke run, `:identity` for the
variant with an identity hidden layer (where the paper's APD failed), or
both (`:identity,quick`); `:untied` decomposes `W`'s two uses as two
matrices.
"""

from apd_jax.cli import config as common
from apd_jax.targets import tms


def get_config(arg=None):
  args = common.parse_arg(arg, identity=False, quick=False, untied=False)
  c = common.default_config()
  c.target.update(n_features=40, n_hidden=10, steps=2000, batch_size=2048)
  c.method.n_components = 50
  c.method.rank = 11     # the reference's min(n_features, n_hidden) + 1
  c.method.topk = 1.0
  c.steps = 20_000
  c.batch_size = 2048
  c.lr = 1e-3
  c.lr_schedule = "cosine"
  c.warmup_frac = 0.05
  c.method.minimality_coeff = 10.0
  c.method.simplicity_coeff = 20.0
  c.method.schatten_p = 0.9
  tms.variants(c, identity=args.identity, quick=args.quick,
               untied=args.untied)
  return c
