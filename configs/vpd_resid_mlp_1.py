r"""VPD on the 1-layer residual MLP with the VPD authors' toy settings.

  python -m apd_jax.main --config=configs/vpd_resid_mlp_1.py \
      --workdir=/tmp/vpd_resid_mlp_1

Target: 100 features in a 1000-dimensional residual stream, one MLP of 50
neurons (as `spd_resid_mlp_1.py`). Their recipe: 200 subcomponents per
matrix, a layerwise CI MLP with one hidden layer of 400, importance 1e-6
with frequency 5e-7 (reference count 32768), batch 2048, 50k steps, Adam
at 2e-3 on a cosine to 0.1x, and their toy recipe (`vpd.TOY_RECIPE`, as
`vpd_tms_5_2.py`). The success rule is SPD's: one `W_in` subcomponent per
input feature. Pass `:quick` for a 1k-step smoke run.
"""

from apd_jax.cli import config as common
from apd_jax.methods import vpd
from apd_jax.targets import resid_mlp


def get_config(arg=None):
  args = common.parse_arg(arg, quick=False)
  c = common.default_config("vpd")
  resid_mlp.configure(c, n_layers=1)
  c.method.update(vpd.TOY_RECIPE)
  c.method.n_components = 200
  c.method.ci_hidden = (400,)
  c.method.importance_coeff = 1e-6
  c.method.frequency_coeff = 5e-7
  c.steps = 50_000
  c.batch_size = 2048
  c.lr = 2e-3
  c.lr_schedule = "cosine"
  c.lr_final_frac = 0.1
  c.warmup_frac = 0.0
  c.log_every = 200
  c.print_every = 2000
  c.checkpoint_every = 5000
  c.sweep.select, c.sweep.select_mode = "pgd_recon", "min"
  resid_mlp.variants(c, quick=args.quick)
  return c
