r"""APD on the 1-layer residual MLP (100 functions, 50 neurons), paper settings.

  python -m apd_jax.main --config=configs/resid_mlp_1.py --workdir=/tmp/rmlp1

Paper: one component per input feature, scrubbed loss near the top-k loss and
far below the anti-scrubbed loss. 40k steps at batch 2048 with full-rank
(m = 50) components is long on a CPU; `configs/resid_mlp_1.py:rank1` uses
rank-1 components (a feature's computation is rank 1 in each matrix), and
`:quick` (combinable, e.g. `:rank1,quick`) is a 1k-step smoke run.
"""

from apd_jax.cli import config as common
from apd_jax.targets import resid_mlp


def get_config(arg=None):
  args = common.parse_arg(arg, rank1=False, quick=False)
  c = common.default_config()
  resid_mlp.configure(c, n_layers=1)
  c.method.update(resid_mlp.APD_OPTIONS)
  c.method.n_components = 130
  c.steps = 40_000
  c.method.minimality_coeff = 1.0
  c.method.simplicity_coeff = 10.0
  c.method.unit_norm_matrices = True
  resid_mlp.variants(c, rank1=args.rank1, quick=args.quick)
  return c
