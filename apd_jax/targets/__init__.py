"""The toy targets, each one module with its model, its config helper, its
metrics and its report, chosen by name (`get`).

A target module holds the model as pure functions (`init`, `apply`,
`sampler`, and `train` or `build`) and, for the command line, the fields of
a `config.target` ConfigDict `t` they take (`ARCH`: `init`'s, `TRAIN`:
`train`'s besides those, `SAMPLER`: `sampler`'s), `HAS_AUX`, `METRICS` (its
measures of success), `SELECT` (the metric and mode that pick a sweep's best
run), `SUCCESS` (the metric a seed must reach `sweep.mmcs_threshold` in, or
None) and `report(result, sample_fn, workdir, *, t, seed, batch_size,
eval_batches, figures) -> dict` (its analyses and, with `figures`, its PNG
figures; `t` the target's section of the config as a dict). Reports ask the
decomposition, never which method made it. The functions below make the
target of a config from them.
"""

from types import ModuleType
from typing import Any

import jax

from apd_jax.targets import gated
from apd_jax.targets import lm
from apd_jax.targets import resid_mlp
from apd_jax.targets import tms

TARGETS: dict[str, ModuleType] = {"tms": tms, "resid_mlp": resid_mlp,
                                  "gated": gated, "lm": lm}


def get(name: str) -> ModuleType:
  """The target module called `name`."""
  if name not in TARGETS:
    raise ValueError(f"unknown target {name!r}; known: {sorted(TARGETS)}")
  return TARGETS[name]


def template(module: ModuleType, t: Any) -> Any:
  """Params of the configured shape (to load saved ones into)."""
  return module.init(jax.random.PRNGKey(0),
                     **{k: t[k] for k in module.ARCH})


def build(module: ModuleType, t: Any, seed: int) -> tuple[Any, Any]:
  """`(params, training losses or None)`: the target trained (or built)."""
  if hasattr(module, "build"):
    return module.build(t, seed)
  return module.train(jax.random.PRNGKey(seed),
                      **{k: t[k] for k in module.ARCH + module.TRAIN})


def sample_fn(module: ModuleType, t: Any):
  return module.sampler(**{k: t[k] for k in module.SAMPLER})


def apply_fn(module: ModuleType):
  return getattr(module, getattr(module, "APPLY", "apply"))
