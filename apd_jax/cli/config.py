"""What a config file holds, and how its argument is parsed.

`default_config()` has `include`, `method` ('apd' or 'spd') and one field
per `APD`, `SPD` and `Training` option (their docstrings say what each does;
the two methods share `n_components`, `faithfulness_coeff` and `recon`; the
command line starts from APD's TMS 5-2 paper values), plus `target`, `mesh`
and `sweep`. `parse_arg`
reads a config file's argument (`configs/tms_5_2.py:identity,quick`)
with types and rejects unknown names. `method_and_training(config)` makes
the two objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from apd_jax.methods.apd import APD
from apd_jax.methods.spd import SPD
from apd_jax.training.options import Training

METHODS = {"apd": APD, "spd": SPD}

# Options that a config does not hold (objects, or set by the runner).
NOT_IN_CONFIG = ("optimizer", "callback", "mesh", "checkpoint_dir",
                 "progress")
# The command line's defaults where they differ from the objects' own: TMS
# 5-2 with the paper's settings.
CLI_DEFAULTS = dict(n_components=5, topk=0.211, steps=20_000, lr=3e-2,
                    warmup_frac=0.05, simplicity_coeff=0.7,
                    hidden_acts="post_relu", checkpoint_every=5000)
# Options whose default is None, with the type a value must have.
OPTIONAL = {"rank": int, "factored": bool, "importance_p_final": float,
            "warmup_frac": float}
# SPD's required options, at its TMS 5-2 paper value.
SPD_DEFAULTS = dict(importance_coeff=3e-3)
# Every numeric option a sweep may vary, of either method.
SWEEPABLE = tuple(dict.fromkeys(Training.SWEEPABLE + APD.SWEEPABLE
                                + SPD.SWEEPABLE))


def option_names(cls) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.name not in NOT_IN_CONFIG)


def default_config() -> ml_collections.ConfigDict:
  """Every option at the command line's default, the TMS 5-2 target, all
  local devices on the data axis, and nothing swept."""
  c = ml_collections.ConfigDict()
  c.include = "W"              # regex over leaf keystr: leaves to decompose
  c.method = "apd"             # 'apd' or 'spd'
  for cls in (APD, SPD, Training):
    for f in dataclasses.fields(cls):
      if f.name in NOT_IN_CONFIG or f.name in c:
        continue
      if f.name in SPD_DEFAULTS:
        c[f.name] = SPD_DEFAULTS[f.name]
        continue
      if f.name in OPTIONAL:
        c[f.name] = ml_collections.config_dict.placeholder(OPTIONAL[f.name])
      else:
        c[f.name] = CLI_DEFAULTS.get(f.name, f.default)
  c.target = ml_collections.ConfigDict(dict(
      name="tms",              # a module of apd_jax/targets
      path="",                 # load params from this msgpack file if set
      n_features=5, n_hidden=2, n_hidden_layers=0,
      feature_probability=0.05,
      steps=5000, batch_size=1024, lr=5e-3, weight_decay=0.01))
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,                 # devices splitting the batch; -1: the rest
      component=1))            # devices splitting C (factors, Adam moments)
  # Sweep: every combination of the listed values trains in one program
  # (empty: not swept); see apd_jax/engine/sweep.py.
  c.sweep = ml_collections.ConfigDict(dict(
      **{n: () for n in SWEEPABLE},
      target_per_seed=False,   # each seed's run decomposes a target
                               # trained with that seed
      select="topk_recon",     # the metric that picks the best run
      select_mode="min",       # 'min' or 'max'
      mmcs_threshold=0.99))    # TMS: seeds at MMCS >= this count as success
  return c


def method_and_training(config: ml_collections.ConfigDict, **training
                        ) -> tuple[APD | SPD, Training]:
  """The config's method (`APD` or `SPD`, by `config.method`) and
  `Training` (`training` adds the options a config does not hold);
  `checkpoint_every` is rounded up to a multiple of `log_every`
  (checkpoints are taken at log steps)."""
  t = {n: config[n] for n in option_names(Training)}
  if t["checkpoint_every"] > 0:
    t["checkpoint_every"] = -(-t["checkpoint_every"] // t["log_every"]) * (
        t["log_every"])
  if config.method not in METHODS:
    raise ValueError(f"config.method must be one of {sorted(METHODS)}, got "
                     f"{config.method!r}")
  cls = METHODS[config.method]
  method = cls(**{n: config[n] for n in option_names(cls)})
  return method, Training(**t, **training)


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """A config file's argument, e.g. `'identity,quick'` or `'quick,seed=3'`.

  Args:
    arg: comma-separated `name` (sets a bool to True) or `name=value`
      (converted to the type of the default).
    **spec: every accepted name with its default.

  Raises:
    ValueError: for an unknown name, or a value of the wrong type.
  """
  out = ml_collections.ConfigDict(spec)
  for token in filter(None, (arg or "").split(",")):
    name, eq, value = token.partition("=")
    name = name.strip()
    if name not in spec:
      raise ValueError(f"unknown config argument {name!r} in {arg!r}; "
                       f"known: {sorted(spec)}")
    default = spec[name]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {name!r} needs a value "
                         f"({name}=...)")
      out[name] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {name}={value!r}: not a bool")
      out[name] = value.lower() in ("true", "1")
    else:
      try:
        out[name] = type(default)(value)
      except ValueError as e:
        raise ValueError(f"config argument {name}={value!r}: not a "
                         f"{type(default).__name__}") from e
  return out
