r"""APD on the transformer target: every matrix of both layers (the
attention's query, key, value and output kernels, the MLP's in and out),
each position of each 128-byte window an example for top-k, KL on the
next-byte logits.

  python scripts/train_lm.py --config=configs/lm_target.py \
      --workdir=runs/lm_target
  python -m apd_jax.main --config=configs/apd_lm.py --workdir=runs/apd_lm \
      --config.target.path=runs/lm_target/target_params.msgpack

Without `target.path` the target is trained first with the settings of
`configs/lm_target.py`. An APD component spans all 12 matrices (rank 16 in
each); `per_position` makes the attributions those of each position's
next-byte logits, `A²[t, c] = Σ_v (∂y_tv/∂α_c)²`, and the batch top-k keeps
on average `topk` components per position. Each step pushes C tangents
through the model (exact forward-mode attributions), so a step costs about
C forward passes. The settings are this library's starting point, not
tuned values: the APD paper decomposes no language model. `:tiny` is a
1-layer d_model 32 model trained and decomposed in seconds (the tests run
it).
"""

from apd_jax.cli import config as common
from apd_jax.targets import lm


def get_config(arg=None):
  args = common.parse_arg(arg, tiny=False)
  c = common.default_config()
  lm.configure(c)
  c.method.n_components = 32
  c.method.rank = 16
  c.method.topk = 2.0
  c.method.per_position = True
  c.method.faithfulness_coeff = 1e4
  c.method.simplicity_coeff = 1.0
  c.method.schatten_p = 0.9
  c.steps = 1000
  c.batch_size = 4
  c.warmup_frac = 0.05
  c.print_every = 100
  lm.variants(c, tiny=args.tiny)
  return c
