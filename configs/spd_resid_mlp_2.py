r"""SPD on the 2-layer residual MLP with the SPD paper's settings.

  python -m apd_jax.main --config=configs/spd_resid_mlp_2.py \
      --workdir=/tmp/spd_rmlp2

Paper: one `W_in` subcomponent per input feature (100 alive) and `W_out`
used as one block of about rank 50. 400 rank-one subcomponents per matrix,
importance coefficient 1e-5 with p = 2, batch 2048,
50k steps, Adam at 1e-3 (the paper's branch config uses 2e-5 for the
importance coefficient).
Pass `:quick` for a 1k-step smoke run.
"""

from apd_jax.cli import config as common
from apd_jax.targets import resid_mlp


def get_config(arg=None):
  args = common.parse_arg(arg, quick=False)
  c = common.default_config("spd")
  resid_mlp.configure(c, n_layers=2)
  c.method.n_components = 400
  c.method.importance_coeff = 1e-5
  c.method.importance_p = 2.0
  c.method.gate_hidden = 16
  c.steps = 50_000
  c.batch_size = 2048
  c.lr = 1e-3
  c.lr_schedule = "constant"
  c.warmup_frac = 0.0
  c.log_every = 200
  c.print_every = 2000
  c.checkpoint_every = 10_000
  c.sweep.select, c.sweep.select_mode = "stochastic_recon", "min"
  resid_mlp.variants(c, quick=args.quick)
  return c
