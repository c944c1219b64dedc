r"""APD on the 2-layer residual MLP (25 + 25 neurons), paper settings.

  python -m apd_jax.main --config=configs/resid_mlp_2.py --workdir=/tmp/rmlp2

Paper: features computed across both layers are each recovered by a single
component spanning the two layers. `:rank1` and `:quick` as in resid_mlp_1.
"""

from apd_jax.cli import config as common
from apd_jax.targets import resid_mlp


def get_config(arg=None):
  args = common.parse_arg(arg, rank1=False, quick=False)
  c = common.default_config()
  resid_mlp.configure(c, n_layers=2)
  c.method.update(resid_mlp.APD_OPTIONS)
  c.method.n_components = 200
  c.steps = 10_000
  c.method.minimality_coeff = 2.0
  c.method.simplicity_coeff = 7.0
  resid_mlp.variants(c, rank1=args.rank1, quick=args.quick)
  return c
