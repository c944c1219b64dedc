"""Which leaves of a params pytree are decomposed, and how to put them back.

A decomposed leaf is named by `jax.tree_util.keystr` of its path (for example
`"['W']"` or `"['params']['Dense_0']['kernel']"`). Selection is a regular
expression searched in that name; every selected leaf must have at least 2
axes (one of more axes is decomposed as the matrix it is: see
`target.matrix_axes`). All other leaves (biases, embeddings) stay fixed. A
leaf used twice by the model (TMS uses `W` and `Wᵀ`) is one leaf here, so
both uses share its components.
"""

from __future__ import annotations

import re
from typing import Any
from typing import Mapping

import jax
import numpy as np

Params = Any


def leaf_names(params: Params) -> list[str]:
  """All leaf names of `params`, in flattening order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return [jax.tree_util.keystr(path) for path, _ in leaves]


def select_leaves(params: Params, include: str) -> tuple[str, ...]:
  """Names of the leaves whose keystr matches `include` (`re.search`).

  Raises:
    ValueError: if the pattern is invalid, matches no leaf, or matches a leaf
      with fewer than 2 axes.
  """
  try:
    pattern = re.compile(include)
  except re.error as e:
    raise ValueError(f"include={include!r} is not a valid regex: {e}") from e
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  names = []
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    if not pattern.search(name):
      continue
    if np.ndim(leaf) < 2:
      raise ValueError(
          f"include={include!r} matches leaf {name} of shape "
          f"{np.shape(leaf)}; only weight matrices (2 or more axes) can be "
          f"decomposed")
    names.append(name)
  if not names:
    raise ValueError(
        f"include={include!r} matches no leaf; the leaves are "
        f"{leaf_names(params)}")
  return tuple(names)


def get_leaves(params: Params, names: tuple[str, ...]) -> dict[str, jax.Array]:
  """`{name: leaf}` for the named leaves."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  by_name = {jax.tree_util.keystr(p): x for p, x in leaves}
  return {n: by_name[n] for n in names}


def replace_leaves(params: Params, new: Mapping[str, jax.Array]) -> Params:
  """`params` with the named leaves replaced by `new[name]`."""
  def swap(path, leaf):
    return new.get(jax.tree_util.keystr(path), leaf)
  return jax.tree_util.tree_map_with_path(swap, params)
