r"""VPD on TMS 5-2 with the VPD authors' toy settings.

  python -m apd_jax.main --config=configs/vpd_tms_5_2.py \
      --workdir=/tmp/vpd_tms_5_2
  python scripts/reproduce.py --config=configs/vpd_tms_5_2.py --seeds=10 \
      --workdir=runs/vpd_tms_5_2_seeds --mmcs_threshold=0.999

Their TMS 5-2 recipe: 20 subcomponents per matrix, a layerwise CI MLP with
one hidden layer of 50, importance 8e-4 with frequency 4e-4 (reference
count 32768), stochastic and adversarial terms 0.5 each (2 warm-up
ascents, one set of sources per example, their Adam at β1 0.01, lr 0.01
reached over 2.5%), faithfulness 1, batch 4096, 20k steps, Adam at 1e-3 on
a cosine schedule, the factors' and the CI function's gradients each
clipped at norm 1. Where this differs from theirs: `W` is one leaf used
twice, so both uses share their factors (theirs are two matrices); one
optimiser for factors and CI function, cosine to 0 (theirs: two, each to
0.1x); no faithfulness warm-up. Pass `:identity` for the identity hidden
layer, `:quick` for a 2k-step smoke run.
"""

from apd_jax.cli import config as common
from apd_jax.targets import tms


def get_config(arg=None):
  args = common.parse_arg(arg, identity=False, quick=False)
  c = common.default_config("vpd")
  c.target.update(n_features=5, n_hidden=2, steps=5000, batch_size=1024)
  c.method.n_components = 20
  c.method.ci_hidden = (50,)
  c.method.importance_coeff = 8e-4
  c.method.frequency_coeff = 4e-4
  c.method.reference_count = 32768.0
  c.method.stochastic_coeff = 0.5
  c.method.adversarial_coeff = 0.5
  c.method.faithfulness_coeff = 1.0
  c.method.source_b1 = 0.01
  c.method.source_scope = "per_example"
  c.method.grad_clip = 1.0
  c.steps = 20_000
  c.batch_size = 4096
  c.lr = 1e-3
  c.lr_schedule = "cosine"
  c.warmup_frac = 0.0
  c.log_every = 200
  c.print_every = 2000
  c.checkpoint_every = 5000
  tms.variants(c, identity=args.identity, quick=args.quick)
  return c
