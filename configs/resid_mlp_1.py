r"""APD on the 1-layer residual MLP (100 functions, 50 neurons), paper settings.

  python -m apd_jax.main --config=configs/resid_mlp_1.py --workdir=/tmp/rmlp1

Paper: one component per input feature, scrubbed loss near the top-k loss and
far below the anti-scrubbed loss. 40k steps at batch 2048 with full-rank
(m = 50) components is long on a CPU; `configs/resid_mlp_1.py:rank1` uses
rank-1 components (a feature's computation is rank 1 in each matrix), and
`:quick` (combinable, e.g. `:rank1,quick`) is a 1k-step smoke run.
"""

from apd_jax import experiment


def get_config(arg=None):
  c = experiment.residual_config(1, arg)
  c.n_components = 130
  c.steps = 40_000 if "quick" not in (arg or "") else c.steps
  c.minimality_coeff = 1.0
  c.simplicity_coeff = 10.0
  c.unit_norm_matrices = True
  return c
