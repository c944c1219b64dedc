r"""VPD on TMS 40-10 with the VPD authors' toy settings.

  python -m apd_jax.main --config=configs/vpd_tms_40_10.py \
      --workdir=/tmp/vpd_tms_40_10

Their TMS 40-10 recipe: 100 subcomponents per matrix, a layerwise CI MLP
with one hidden layer of 200, importance 6e-5 with frequency 3e-5
(reference count 32768), batch 4096, 20k steps, Adam at 1e-3 on a cosine
to 0.1x, and their toy recipe (`vpd.TOY_RECIPE`, as `vpd_tms_5_2.py`),
`W`'s two uses decomposed apart. Where this differs from theirs: the
cosine is a quarter wave. Pass `:identity` for the identity hidden layer,
`:quick` for a 2k-step smoke run, `:untied=false` for shared factors.
"""

from apd_jax.cli import config as common
from apd_jax.methods import vpd
from apd_jax.targets import tms


def get_config(arg=None):
  args = common.parse_arg(arg, identity=False, quick=False, untied=True)
  c = common.default_config("vpd")
  c.target.update(n_features=40, n_hidden=10, steps=2000, batch_size=2048)
  c.method.update(vpd.TOY_RECIPE)
  c.method.n_components = 100
  c.method.ci_hidden = (200,)
  c.method.importance_coeff = 6e-5
  c.method.frequency_coeff = 3e-5
  c.steps = 20_000
  c.batch_size = 4096
  c.lr = 1e-3
  c.lr_schedule = "cosine"
  c.lr_final_frac = 0.1
  c.warmup_frac = 0.0
  c.log_every = 200
  c.print_every = 2000
  c.checkpoint_every = 5000
  tms.variants(c, identity=args.identity, quick=args.quick,
               untied=args.untied)
  return c
