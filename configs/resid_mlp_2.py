r"""APD on the 2-layer residual MLP (25 + 25 neurons), paper settings.

  python -m apd_jax.main --config=configs/resid_mlp_2.py --workdir=/tmp/rmlp2

Paper: features computed across both layers are each recovered by a single
component spanning the two layers. `:rank1` and `:quick` as in resid_mlp_1.
"""

from apd_jax import experiment


def get_config(arg=None):
  c = experiment.residual_config(2, arg)
  c.n_components = 200
  c.steps = 10_000 if "quick" not in (arg or "") else c.steps
  c.minimality_coeff = 2.0
  c.simplicity_coeff = 7.0
  return c
