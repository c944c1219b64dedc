"""Which leaves of a params pytree are decomposed, and how to put them back.

A decomposed leaf is named by `jax.tree_util.keystr` of its path (for example
`"['W']"` or `"['params']['Dense_0']['kernel']"`). Selection is a regular
expression searched in that name; every selected leaf must have at least 2
axes (one of more axes is decomposed as the matrix it is: see
`target.matrix_axes`). All other leaves (biases, embeddings) stay fixed. A
leaf used twice by the model (TMS uses `W` and `Wᵀ`) is one leaf here, so
both uses share its components.

`View` sees an array as a reshape and transpose of a leaf (or of its
matrix): `target.matrix_axes` follows a leaf through the model's reshapes
and transposes with it to find the axes its products contract, and
`fast/factored.py` a matrix through the layout back to its leaf.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
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


Atom = tuple[tuple[int, ...], int]


@dataclasses.dataclass(frozen=True)
class View:
  """An array seen as a reshape and transpose of a source array.

  The source's axes are cut into *atoms* (an axis of size 6 seen as 2 × 3
  is two): an atom's key is its source axis followed by its place among
  that axis's cuts, so sorting keys gives the source's row-major order.
  `atoms` lists `(key, size)` in the value's row-major order, and value
  axis `j` merges the next `groups[j]` of them.
  """
  atoms: tuple[Atom, ...]
  groups: tuple[int, ...]

  @classmethod
  def of(cls, shape: tuple[int, ...]) -> View:
    """The source itself."""
    return cls(tuple(((a,), s) for a, s in enumerate(shape)),
               (1,) * len(shape))

  def axes(self) -> list[tuple[Atom, ...]]:
    """The atoms of each axis of the value."""
    ends = np.cumsum((0,) + self.groups)
    return [self.atoms[i:j] for i, j in zip(ends[:-1], ends[1:], strict=True)]

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(math.prod(s for _, s in ax) for ax in self.axes())

  def is_identity(self) -> bool:
    """Whether the value is the source itself."""
    return all(len(ax) == 1 and ax[0][0] == (a,)
               for a, ax in enumerate(self.axes()))

  def transpose(self, perm: tuple[int, ...]) -> View:
    axes = self.axes()
    new = [axes[p] for p in perm]
    return View(tuple(a for ax in new for a in ax), tuple(map(len, new)))

  def reshape(self, shape: tuple[int, ...]) -> View | None:
    """The value reshaped (row-major), cutting atoms where an axis ends
    inside one; None where the sizes do not allow it."""
    queue = [a for a in self.atoms if a[1] != 1]
    atoms, groups = [], []
    for n in shape:
      size, count = 1, 0
      while size < n:
        if not queue:
          return None
        key, s = queue.pop(0)
        if n % (size * s) == 0:
          atoms.append((key, s))
          size *= s
        elif n % size == 0 and s % (n // size) == 0:
          atoms.append((key + (0,), n // size))
          queue.insert(0, (key + (1,), s // (n // size)))
          size = n
        else:
          return None
        count += 1
      groups.append(count)
    return None if queue else View(tuple(atoms), tuple(groups))

  def apply(self, source: Array) -> Array:
    """The value, from the source array."""
    order = sorted(range(len(self.atoms)), key=lambda j: self.atoms[j][0])
    cut = jnp.reshape(source, tuple(self.atoms[j][1] for j in order))
    moved = jnp.transpose(cut, tuple(np.argsort(order)))
    return jnp.reshape(moved, self.shape)


def follow(view: View, prim: str, params: Mapping[str, Any]
           ) -> View | None:
  """`view` after a `transpose`, `reshape`, `squeeze` or `broadcast_in_dim`
  that only adds axes of size 1; None for any other operation."""
  if prim == "transpose":
    return view.transpose(tuple(params["permutation"]))
  if prim == "reshape" and params.get("dimensions") is None:
    return view.reshape(tuple(params["new_sizes"]))
  if prim == "squeeze":
    drop = set(params["dimensions"])
    return view.reshape(tuple(s for a, s in enumerate(view.shape)
                              if a not in drop))
  if (prim == "broadcast_in_dim"
      and math.prod(params["shape"]) == math.prod(view.shape)):
    return view.reshape(tuple(params["shape"]))
  return None
