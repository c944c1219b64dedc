r"""SPD on the hand-coded gated functions.

  python -m apd_jax.main --config=configs/spd_gated_functions.py \
      --workdir=/tmp/spd_gated

The SPD paper has no run on this model; the settings are those of its TMS
and residual-MLP runs (p = 2, causal-importance MLPs of width 16, Adam at
1e-3 on a cosine schedule) with 20 rank-one subcomponents per matrix. A
function counts as recovered when every decomposed matrix has one
subcomponent close to the function's part of it. Pass `:quick` for a
2k-step smoke run.
"""

import importlib.util
import os

from apd_jax.cli import config as common


def _apd_config(arg):
  """configs/gated_functions.py's config (the target and its settings)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "gated_functions.py")
  spec = importlib.util.spec_from_file_location("gated_functions", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg=None):
  args = common.parse_arg(arg, quick=False)
  c = _apd_config("quick" if args.quick else None)
  common.use_method(c, "spd")     # the target's settings, SPD's options
  c.method.n_components = 20
  c.method.faithfulness_coeff = 1.0
  c.method.importance_coeff = 1e-3
  c.method.importance_p = 2.0
  c.method.gate_hidden = 16
  c.steps = 2000 if args.quick else 40_000
  c.batch_size = 2048 if args.quick else 4096
  c.lr = 1e-3
  c.lr_schedule = "cosine"
  c.warmup_frac = 0.0
  c.log_every = 100 if args.quick else 500
  c.print_every = 500 if args.quick else 5000
  c.sweep.select, c.sweep.select_mode = "stochastic_recon", "min"
  return c
