r"""SPD on TMS 40-10 with the SPD paper's settings.

  python -m apd_jax.main --config=configs/spd_tms_40_10.py \
      --workdir=/tmp/spd_tms_40_10

Paper (SPD, Table 1): MMCS 1.000, ML2R 1.010 ± 0.007. 200 rank-one
subcomponents per matrix, importance coefficient 1e-4 with p = 2, 40k steps
at batch 4096, Adam at 1e-3 on a cosine schedule. Pass `:identity` for the
variant with an identity hidden layer (paper: MMCS 1.000, ML2R 1.031 ±
0.001), `:quick` for a 2k-step smoke run and `:untied` for `W`'s two uses
decomposed as two matrices.
"""

from apd_jax.cli import config as common
from apd_jax.targets import tms


def get_config(arg=None):
  args = common.parse_arg(arg, identity=False, quick=False, untied=False)
  c = common.default_config("spd")
  c.target.update(n_features=40, n_hidden=10, steps=2000, batch_size=2048)
  c.method.n_components = 200
  c.method.importance_coeff = 1e-4
  c.method.importance_p = 2.0
  c.method.gate_hidden = 16
  c.steps = 40_000
  c.batch_size = 4096
  c.lr = 1e-3
  c.lr_schedule = "cosine"
  c.warmup_frac = 0.0
  c.log_every = 200
  c.print_every = 2000
  c.checkpoint_every = 10_000
  tms.variants(c, identity=args.identity, quick=args.quick,
               untied=args.untied)
  return c
