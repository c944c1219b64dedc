"""A finished decomposition on disk, to analyse in another process.

    export.save(result, "runs/tms/decomposition", config=config_dict)
    result = export.load("runs/tms/decomposition")
    result.scores(x), result.component_weights, result.metrics

The directory holds the factors and the target's params (orbax, written by
every process of a run; numpy arrays are written by process 0), and
`decomposition.json`: the method and its options, the plan the library
derived, the decomposed leaves, the final metrics, the history, the run's
config and where the target's `apply_fn` can be imported from. A target
whose `apply_fn` is not a
module-level function (a lambda, a Flax `model.apply`) is loaded by passing
`apply_fn` again.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from apd_jax import methods
from apd_jax.core.target import ApplyFn
from apd_jax.core.target import Target
from apd_jax.engine import api
from apd_jax.training import distributed

META = "decomposition.json"


def function_path(fn: Any) -> str | None:
  """`'module:qualname'` if that import gives back `fn`, else None."""
  module, name = getattr(fn, "__module__", None), getattr(
      fn, "__qualname__", "")
  if not module or "<" in name:
    return None
  try:
    found = _import(f"{module}:{name}")
  except (ImportError, AttributeError):
    return None
  return f"{module}:{name}" if found is fn else None


def _import(path: str) -> Any:
  module, name = path.split(":")
  obj = importlib.import_module(module)
  for part in name.split("."):
    obj = getattr(obj, part)
  return obj


def save(result: api.Decomposition, directory: str, *,
         config: dict | None = None) -> None:
  """Writes `result` (and the run's `config`) to `directory`, replacing it.

  Every process of a run calls it.
  """
  directory = os.path.abspath(directory)
  host = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(directory, "components"),
              host(flax.serialization.to_state_dict(result.components)),
              force=True)
    ckpt.save(os.path.join(directory, "target_params"),
              host(result.target.params), force=True)
  if distributed.is_main():
    plan = result.plan
    meta = dict(method=result.method.NAME,
                options=dataclasses.asdict(result.method),
                plan=(dataclasses.asdict(plan)
                      if dataclasses.is_dataclass(plan) else None),
                names=list(result.target.names),
                row_axes=(list(result.target.row_axes)
                          if result.target.row_axes else None),
                has_aux=result.target.has_aux,
                apply_fn=function_path(result.target.apply_fn),
                metrics=result.metrics, history=result.history,
                config=config)
    with open(os.path.join(directory, META), "w") as f:
      json.dump(meta, f, indent=2)


def load(directory: str, *, apply_fn: ApplyFn | None = None
         ) -> api.Decomposition:
  """The `Decomposition` saved in `directory`, its arrays on this process.

  Args:
    directory: written by `save`.
    apply_fn: the target's apply function; needed when the saved one was not
      importable.

  Raises:
    ValueError: if `apply_fn` is needed and not given.
  """
  directory = os.path.abspath(directory)
  with open(os.path.join(directory, META)) as f:
    meta = json.load(f)
  if apply_fn is None:
    if meta["apply_fn"] is None:
      raise ValueError(
          f"the target's apply_fn in {directory} is not an importable "
          f"function; pass it as load(..., apply_fn=...)")
    apply_fn = _import(meta["apply_fn"])
  dev = lambda tree: jax.tree.map(jnp.asarray, tree)  # noqa: E731
  with ocp.StandardCheckpointer() as ckpt:
    factors = ckpt.restore(os.path.join(directory, "components"))
    params = ckpt.restore(os.path.join(directory, "target_params"))
  rows = meta.get("row_axes")
  target = Target(apply_fn, dev(params), tuple(meta["names"]),
                  meta["has_aux"], tuple(rows) if rows else None)
  try:
    method_cls = methods.get(meta.get("method"))
  except ValueError as e:
    raise ValueError(f"{directory} holds a decomposition by an unknown "
                     f"method: {e} (register it with "
                     f"apd_jax.methods.register)") from None
  comps = method_cls.PARAMS(**dev(factors))
  plan = meta["plan"]
  if plan is not None:
    plan = method_cls.PLAN(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in plan.items()})  # JSON: no tuple
  return api.Decomposition(
      target=target, method=method_cls(**meta["options"]), plan=plan,
      components=comps, metrics=meta["metrics"], history=meta["history"])


def load_config(directory: str) -> dict | None:
  """The config saved with the decomposition in `directory`, if any."""
  with open(os.path.join(os.path.abspath(directory), META)) as f:
    return json.load(f)["config"]
