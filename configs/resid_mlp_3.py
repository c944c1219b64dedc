r"""APD on a 3-layer residual MLP (17 + 17 + 17 neurons).

  python -m apd_jax.main --config=configs/resid_mlp_3.py --workdir=/tmp/rmlp3

No paper settings are given for three layers; these are the 2-layer ones.
`:rank1` and `:quick` as in resid_mlp_1.
"""

from apd_jax.cli import config as common
from apd_jax.targets import resid_mlp


def get_config(arg=None):
  args = common.parse_arg(arg, rank1=False, quick=False)
  c = common.default_config()
  resid_mlp.configure(c, n_layers=3)
  c.method.update(resid_mlp.APD_OPTIONS)
  c.method.n_components = 200
  c.steps = 10_000
  c.method.minimality_coeff = 2.0
  c.method.simplicity_coeff = 7.0
  resid_mlp.variants(c, rank1=args.rank1, quick=args.quick)
  return c
