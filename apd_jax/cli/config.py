"""What a config file holds, and how its argument is parsed.

`default_config(method)` holds `include` and `figures`; `method`, a section
with the method's `name` and only that method's options
(`config.method.topk`; the method's docstring says what each does; required
ones start at the method's `CLI_DEFAULTS`, its TMS 5-2 paper values); every
`Training` option at the top level (`config.steps`); and `target`, `mesh`
and `sweep` (the sweepable `Training` and method options). `check` rejects a
method section holding another method's options, naming the valid ones;
`parse_arg` reads a config file's argument
(`configs/tms_5_2.py:identity,quick`); `method_and_training(config)` makes
the two objects. A check of the command line raises `ConfigError`
(`user_errors`), which it shows in one line.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import ml_collections

from apd_jax import methods
from apd_jax.engine import sweep
from apd_jax.training.options import Training

# Options that a config does not hold (objects, or set by the runner).
NOT_IN_CONFIG = ("optimizer", "callback", "mesh", "checkpoint_dir",
                 "progress")
# The command line's Training defaults where they differ from `Training`'s
# own: TMS 5-2 with APD's paper settings.
TRAINING_DEFAULTS = dict(steps=20_000, lr=3e-2, warmup_frac=0.05,
                         checkpoint_every=5000)
# Sweep-section fields that are not swept values.
SWEEP_SETTINGS = ("target_per_seed", "select", "select_mode",
                  "mmcs_threshold")
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


class ConfigError(ValueError):
  """An option or a workdir that a run refuses, found before the run starts
  (the command line shows its message in one line)."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """Re-raises a `ValueError` or `TypeError` from inside as a `ConfigError`
  with its message (the original as its cause)."""
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from e


def option_names(cls) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.name not in NOT_IN_CONFIG)


def _field_value(cls, f: dataclasses.Field) -> Any:
  """The config's value of option `f`: `CLI_DEFAULTS`, else its default (a
  typed placeholder where that is None)."""
  value = getattr(cls, "CLI_DEFAULTS", {}).get(f.name, f.default)
  if value is dataclasses.MISSING:
    raise ValueError(f"{cls.__name__}.{f.name} is required and has no value "
                     f"in {cls.__name__}.CLI_DEFAULTS")
  if value is None:
    found = re.findall(r"\b(int|float|bool|str)\b", str(f.type))
    return ml_collections.config_dict.placeholder(
        _TYPES[found[0]] if found else object)
  return value


def method_section(name: str) -> ml_collections.ConfigDict:
  """`name` and every option of the method registered as `name`."""
  cls = methods.get(name)
  section = ml_collections.ConfigDict()
  section.name = cls.NAME
  for f in dataclasses.fields(cls):
    section[f.name] = _field_value(cls, f)
  return section


def sweepable(method_name: str) -> tuple[str, ...]:
  """The options a sweep of this method may vary: Training's, then the
  method's (the last varies fastest in the grid)."""
  return sweep.sweepable(methods.get(method_name))


def default_config(method: str = "apd") -> ml_collections.ConfigDict:
  """Every option of `method` and `Training` at the command line's default,
  the TMS 5-2 target, all local devices on the data axis, and nothing
  swept."""
  c = ml_collections.ConfigDict()
  c.include = "W"              # regex over leaf keystr: leaves to decompose
  c.figures = True             # PNG figures (False: the numbers, tables and
                               # TensorBoard scalars only, e.g. for sweeps)
  c.method = method_section(method)
  for f in dataclasses.fields(Training):
    if f.name not in NOT_IN_CONFIG:
      c[f.name] = _field_value(Training, f) if f.name not in (
          TRAINING_DEFAULTS) else TRAINING_DEFAULTS[f.name]
  c.target = ml_collections.ConfigDict(dict(
      name="tms",              # a module of apd_jax/targets
      path="",                 # load params from this msgpack file if set
      n_features=5, n_hidden=2, n_hidden_layers=0, untied=False,
      feature_probability=0.05,
      steps=5000, batch_size=1024, lr=5e-3, weight_decay=0.01))
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,                 # devices splitting the batch; -1: the rest
      component=1))            # devices splitting C (factors, Adam moments)
  # Sweep: every combination of the listed values trains in one program
  # (empty: not swept); see apd_jax/engine/sweep.py.
  c.sweep = ml_collections.ConfigDict(dict(
      **{n: () for n in sweepable(method)},
      target_per_seed=False,   # each seed's run decomposes a target
                               # trained with that seed
      select=methods.get(method).SELECT[0],   # the metric that picks the
      select_mode=methods.get(method).SELECT[1],  # best run: 'min'/'max'
      mmcs_threshold=0.99))    # TMS: seeds at MMCS >= this count as success
  return c


def use_method(c: ml_collections.ConfigDict, name: str) -> None:
  """Gives `c` the method `name`: its section at its defaults, and the
  sweep values it may vary (the sweep's settings kept)."""
  c.method = method_section(name)
  settings = {k: c.sweep[k] for k in SWEEP_SETTINGS}
  c.sweep = ml_collections.ConfigDict(dict(
      **{n: () for n in sweepable(name)}, **settings))


def swept_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The names a sweep of this config may vary, in the grid's order."""
  return sweepable(config.method.name)


def set_option(config: ml_collections.ConfigDict, name: str, value: Any
               ) -> None:
  """Sets the Training or method option `name` (a swept run's value)."""
  if name in config.method:
    config.method[name] = value
  else:
    config[name] = value


def check(config: ml_collections.ConfigDict) -> None:
  """Raises `ValueError` if `config.method` names an unknown method or
  holds options that are not that method's (all of them listed, with the
  valid ones)."""
  cls = methods.get(config.method.name)
  valid = set(option_names(cls))
  foreign = sorted(set(config.method) - valid - {"name"})
  if foreign:
    raise ValueError(
        f"config.method ({cls.NAME}) has options {foreign} that "
        f"{cls.__name__} does not take; its options: {sorted(valid)}")
  swept_foreign = sorted(set(config.sweep) - set(SWEEP_SETTINGS)
                         - set(sweepable(cls.NAME)))
  if swept_foreign:
    raise ValueError(f"config.sweep has {swept_foreign}, which a "
                     f"{cls.__name__} sweep cannot vary; sweepable: "
                     f"{sorted(sweepable(cls.NAME))}")


def method_and_training(config: ml_collections.ConfigDict, **training
                        ) -> tuple[Any, Training]:
  """The config's method (the class registered as `config.method.name`)
  and `Training` (`training` adds the options a config does not hold);
  `checkpoint_every` is rounded up to a multiple of `log_every`
  (checkpoints are taken at log steps)."""
  check(config)
  t = {n: config[n] for n in option_names(Training)}
  if t["checkpoint_every"] > 0:
    t["checkpoint_every"] = -(-t["checkpoint_every"] // t["log_every"]) * (
        t["log_every"])
  cls = methods.get(config.method.name)
  method = cls(**{n: config.method[n] for n in option_names(cls)})
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


def parse_sets(items: list[str]) -> dict[str, Any]:
  """`['method.ci_fn=scalar', 'steps=1e4']` → `{dotted key: value}`, each
  value a Python literal where it reads as one (`(16,)`, `1e-3`, `True`),
  else the string.

  Raises:
    ValueError: for an item without `=`.
  """
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"{item!r}: expected KEY=VALUE")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out
