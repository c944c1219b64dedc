r"""The transformer target: 2 layers, d_model 128, 4 heads, d_mlp 512,
context 128, bytes as tokens, trained on the standard library's text.

  python scripts/train_lm.py --config=configs/lm_target.py \
      --workdir=runs/lm_target

`apd_jax/cli/train_lm.py` reads it, trains with `apd_jax/targets/lm.py`
and writes the params (`target_params.msgpack`), the training log, the
held-out loss in nats per byte (`summary.json`) and the loss curves
(`losses.png`).
`:tiny` is a 1-layer d_model 32 model trained for 40 steps (a smoke run).
"""

import ml_collections

from apd_jax.cli import config as common


def get_config(arg=None):
  args = common.parse_arg(arg, tiny=False)
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      vocab=256, n_layers=2, d_model=128, n_heads=4, d_mlp=512, context=128,
      tied=True))
  c.corpus = ml_collections.ConfigDict(dict(
      max_train_bytes=4_000_000, max_heldout_bytes=400_000,
      heldout_frac=0.1))
  c.steps = 4000
  c.batch_size = 32            # windows of context + 1 bytes
  c.lr = 2e-3
  c.warmup = 200
  c.seed = 0
  c.log_every = 100
  c.eval_every = 1000
  if args.tiny:
    c.model.update(n_layers=1, d_model=32, n_heads=2, d_mlp=64, context=32)
    c.corpus.update(max_train_bytes=200_000, max_heldout_bytes=20_000)
    c.update(steps=40, batch_size=8, warmup=10, log_every=20, eval_every=40)
  return c
