r"""VPD on the transformer target: every matrix of both layers (the
attention's query, key, value and output kernels, the MLP's in and out),
each position of each 128-byte window an example, KL on the next-byte
logits.

  python scripts/train_lm.py --config=configs/lm_target.py \
      --workdir=runs/lm_target
  python -m apd_jax.main --config=configs/vpd_lm.py --workdir=runs/vpd_lm \
      --config.target.path=runs/lm_target/target_params.msgpack

Without `target.path` the target is trained first with the settings of
`configs/lm_target.py`. From the VPD authors' language-model recipe:
faithfulness 1e3 after 400 Adam steps at 1e-3 on it alone, importance
5e-6 with frequency 1e-6 (reference count: the positions of a batch),
stochastic (subset-routed) and adversarial terms 0.5 each, persistent
sources shared by the batch, one set per position (2 warm-up ascents,
their Adam at β1 0.5, lr 0.01 over 2.5%), a bidirectional transformer over
every matrix's input as the CI function at a third of the factors'
learning rate, the factors' gradient clipped at norm 0.01, a cosine to
0.1x. Scaled to this model: C = 192 per matrix (as `spd_lm.py`; at least
each matrix's rank), a CI transformer of width 64, 2 blocks of 4 heads
and an MLP of 256, batch 8 windows, lr 2e-3 (theirs, 1.5e-4 over 100k
steps on an 8B model, moves too little in the steps a CPU affords): this
library's starting point, not tuned values. `:tiny` is a 1-layer d_model
32 model trained and decomposed in seconds (the tests run it).
"""

from apd_jax.cli import config as common
from apd_jax.targets import lm


def get_config(arg=None):
  args = common.parse_arg(arg, tiny=False)
  c = common.default_config("vpd")
  lm.configure(c)
  c.method.n_components = 192
  c.method.ci_fn = "transformer"
  c.method.ci_d_model = 64
  c.method.ci_blocks = 2
  c.method.ci_heads = 4
  c.method.ci_hidden = (256,)
  c.method.ci_lr_scale = 1 / 3
  c.method.grad_clip = 0.01
  c.steps = 2000
  c.batch_size = 8
  c.lr_final_frac = 0.1
  c.warmup_frac = 0.0
  c.print_every = 200
  lm.variants(c, tiny=args.tiny)
  if args.tiny:
    c.method.update(ci_d_model=16, ci_heads=2, ci_blocks=1, ci_hidden=(32,),
                    faithfulness_warmup_steps=20)
  return c
