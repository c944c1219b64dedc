r"""APD on a 3-layer residual MLP (17 + 17 + 17 neurons).

  python -m apd_jax.main --config=configs/resid_mlp_3.py --workdir=/tmp/rmlp3

No paper settings are given for three layers; these are the 2-layer ones.
`:rank1` and `:quick` as in resid_mlp_1.
"""

from apd_jax import experiment


def get_config(arg=None):
  c = experiment.residual_config(3, arg)
  c.n_components = 200
  c.steps = 10_000 if "quick" not in (arg or "") else c.steps
  c.minimality_coeff = 2.0
  c.simplicity_coeff = 7.0
  return c
