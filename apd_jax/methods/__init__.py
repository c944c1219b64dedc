"""The decomposition methods, by name: the one place that lists them.

    methods.get("spd")            # the class SPD
    methods.register(MyMethod)    # under MyMethod.NAME, for the command line
                                  # and `load`

A method is a frozen dataclass following `base.Method`; the engine, the
analyses, export and the command line reach it only through that protocol.
"""

from __future__ import annotations

from apd_jax.methods.apd import APD
from apd_jax.methods.base import Method
from apd_jax.methods.spd import SPD
from apd_jax.methods.vpd import VPD

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
  """Makes `cls` known under `cls.NAME` (lower case; its class name is
  accepted too, as old saved decompositions name it); returns `cls`, so it
  can decorate the class."""
  name = getattr(cls, "NAME", None)
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f"{cls!r} needs a NAME (an identifier) to be "
                     f"registered")
  _REGISTRY[name] = cls
  return cls


def get(name: str) -> type:
  """The method class registered as `name` (or with that class name)."""
  if name in _REGISTRY:
    return _REGISTRY[name]
  for cls in _REGISTRY.values():
    if cls.__name__ == name:
      return cls
  raise ValueError(f"unknown method {name!r}; known: {names()}")


def names() -> list[str]:
  return sorted(_REGISTRY)


register(APD)
register(SPD)
register(VPD)

__all__ = ["APD", "SPD", "VPD", "Method", "get", "names", "register"]
