r"""APD on the hand-coded gated functions with the paper's settings.

  python -m apd_jax.main --config=configs/gated_functions.py \
      --workdir=/tmp/gated_functions

Four functions of 10 neurons each, dealt to 2 MLP layers of 20 neurons; the
ideal decomposition has one component per function (C = 4).
Pass `configs/gated_functions.py:quick` for a 2k-step smoke run.
"""

import ml_collections

from apd_jax.cli import config as common
from apd_jax.targets import gated


def get_config(arg=None):
  args = common.parse_arg(arg, quick=False)
  c = common.default_config()
  c.target = ml_collections.ConfigDict(dict(
      name="gated",              # apd_jax/targets/gated.py, built
      path="",                   # load params from this msgpack file if set
      n_functions=4,             # control bits, one function each
      neurons_per_function=10,   # m: ReLU neurons (knots) per function
      n_layers=2,                # MLPs the neurons are dealt to
      range_min=0.0,             # x ~ U[range_min, range_max]
      range_max=5.0,
      # S, the gate's bias; None: 2 * (range_max - range_min)
      suppression=ml_collections.config_dict.placeholder(float),
      simple_bias=False,         # True: the kinks sit in W_in, not b_in
      feature_probability=0.05,  # each control bit on with this probability
  ))
  c.include = r"W_in|W_out"      # every MLP weight; not W_E, W_U, biases
  c.method.n_components = 4      # C = n_functions (the paper: 4 or more)
  c.method.rank = None           # full rank, min(i, o) = 6
  c.method.topk = 0.2217
  c.steps = 200_000
  c.batch_size = 10_000
  c.lr = 3e-3
  c.lr_schedule = "cosine"
  c.warmup_frac = 0.004          # the reference code's warm-up
  c.method.faithfulness_coeff = 0.1
  c.method.minimality_coeff = 5.0
  c.method.simplicity_coeff = 5.0
  c.method.schatten_p = 1.0
  c.log_every = 1000
  c.print_every = 10_000
  c.sweep.select, c.sweep.select_mode = gated.SELECT
  if args.quick:
    c.steps = 2000
    c.batch_size = 2048
    c.log_every = 100
    c.print_every = 500
  return c
