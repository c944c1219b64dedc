r"""SPD on TMS 5-2 with the SPD paper's settings.

  python -m apd_jax.main --config=configs/spd_tms_5_2.py \
      --workdir=/tmp/spd_tms_5_2

Paper (SPD, Table 1): MMCS 1.000, ML2R 0.993 ± 0.002. 20 rank-one
subcomponents, importance coefficient 3e-3 with p = 1, 40k steps at batch
4096, Adam at 1e-3 on a cosine schedule. Pass `:identity` for the variant
with an identity hidden layer (paper: MMCS 1.000, ML2R 0.992 ± 0.010),
`:quick` for a 2k-step smoke run, `:untied` for `W`'s two uses decomposed
as two matrices, `:sweep` for 10 seeds of the decomposition in one program
(all on the seed-0 target).
"""

from apd_jax.cli import config as common
from apd_jax.targets import tms


def get_config(arg=None):
  args = common.parse_arg(arg, identity=False, quick=False, untied=False,
                          sweep=False)
  c = common.default_config("spd")
  c.target.update(n_features=5, n_hidden=2, steps=5000, batch_size=1024)
  c.method.n_components = 20
  c.method.importance_coeff = 3e-3
  c.method.importance_p = 1.0
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
  if args.sweep:
    c.sweep.seed = tuple(range(10))
  return c
