"""The device mesh and where each array of a run lives on it.

A run's devices form a 2-D mesh with axes

  data       the batch is split over it: every per-example array (inputs,
             outputs, attributions `[B, C]`, masks) is sharded on its B axis;
  component  the C axis of the factors `U [C, i, m]`, `V [C, m, o]` and of
             Adam's moments is split over it, for decompositions too large
             for one device.

Everything else (the step, scalars, the data key, the target's params) is
replicated. The step is one `jax.jit` program over global arrays; XLA inserts
the collectives, so the losses are the single-device losses (up to the order
of float sums) and batch top-k over the sharded `[B, C]` array is the exact
global top-k. The same code runs on one CPU, a GPU host or a TPU pod slice
with several processes (see `distributed.py`).
"""

from __future__ import annotations

from typing import Any
from typing import Callable

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

Array = jax.Array
DATA = "data"
COMPONENT = "component"


def make_mesh(data: int = -1, component: int = 1) -> Mesh:
  """A `data × component` mesh over all devices of all processes.

  Args:
    data: devices on the data axis; -1: all devices not on the component axis.
    component: devices on the component axis.

  Raises:
    ValueError: if `data · component` is not the number of devices.
  """
  n = jax.device_count()
  if component < 1 or n % component:
    raise ValueError(f"mesh component={component} must divide the {n} "
                     f"devices")
  if data == -1:
    data = n // component
  if data < 1 or data * component != n:
    raise ValueError(f"mesh data×component = {data}×{component} must equal "
                     f"the number of devices, {n}")
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((data, component), (DATA, COMPONENT), axis_types=auto)


def check_sizes(mesh: Mesh, *, batch_size: int | None, n_components: int
                ) -> None:
  """Raises `ValueError` unless the mesh axes divide B and C (B unchecked
  when None: a sweep splits runs, not the batch, over `data`)."""
  data, component = mesh.shape[DATA], mesh.shape[COMPONENT]
  if batch_size is not None and batch_size % data:
    raise ValueError(f"batch_size={batch_size} must be divisible by the "
                     f"mesh's data axis ({data} devices)")
  if n_components % component:
    raise ValueError(f"n_components={n_components} must be divisible by the "
                     f"mesh's component axis ({component} devices)")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch(mesh: Mesh) -> NamedSharding:
  """Leading (B) axis over `data`."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def components(mesh: Mesh, comps: Any, runs: bool = False) -> Any:
  """The sharding of each leaf of the method's parameters `comps` (arrays
  or abstract): its leading (C) axis over `component`, after the runs axis
  (over `data`) with `runs`. A leaf whose leading axis the component axis
  does not divide (not indexed by component, e.g. a hidden layer of a CI
  function that reads whole activations) is replicated over it."""
  lead = (DATA,) if runs else ()

  def one(a):
    shape = np.shape(a)
    if len(shape) > len(lead) and not shape[len(lead)] % mesh.shape[
        COMPONENT]:
      return NamedSharding(mesh, PartitionSpec(*lead, COMPONENT))
    return NamedSharding(mesh, PartitionSpec(*lead))

  return jax.tree.map(one, comps)


def train_state(mesh: Mesh, state: Any,
                optimizer: optax.GradientTransformation, *,
                runs: bool = False) -> Any:
  """Shardings of a `TrainState` (arrays or abstract): factors and the
  optimizer's per-parameter moments split over C, the rest replicated. With
  `runs` (a sweep's stacked states) every array has a leading runs axis,
  split over `data`."""
  comp = components(mesh, state.components, runs)
  rest = batch(mesh) if runs else replicated(mesh)
  opt = optax.tree_map_params(
      optimizer, lambda _, s: s, state.opt_state, comp,
      transform_non_params=lambda _: rest)
  return state.replace(step=rest, components=comp, opt_state=opt,
                       method_state=jax.tree.map(lambda _: rest,
                                                 state.method_state))


def init(fn: Callable[..., Any], shardings: Callable[[Any], Any],
         *args: Any) -> Any:
  """`fn(*args)` computed directly into its shardings (no device holds the
  whole result).

  Args:
    fn: builds the pytree; traced once abstractly, then compiled.
    shardings: maps the abstract pytree to its shardings.
    *args: global arrays.
  """
  out = shardings(jax.eval_shape(fn, *args))
  return jax.jit(fn, out_shardings=out)(*args)


def put(tree: Any, shardings: Any) -> Any:
  """Host values (the same on every process) as global arrays.

  Each device receives only its own slice, so this works across processes,
  where `jax.device_put` of a whole value to a global sharding cannot (in
  one process, an array already on the devices is `device_put`: no copy
  where it is already in place). `shardings`: a tree of shardings, or one
  for every leaf.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def one(x, s):
    if isinstance(x, jax.Array) and jax.process_count() == 1:
      return jax.device_put(x, s)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

  return jax.tree.map(one, tree, shardings)


def gather(tree: Any) -> Any:
  """Global arrays as host numpy arrays, every process getting the whole."""

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    full = jax.jit(lambda a: a, out_shardings=NamedSharding(
        x.sharding.mesh, PartitionSpec()))(x)
    return np.asarray(full.addressable_data(0))

  return jax.tree.map(one, tree)


def constrain_batch(x: Array, mesh: Mesh) -> Array:
  """Inside jit: `x` sharded over `data` on its leading axis."""
  return jax.lax.with_sharding_constraint(x, batch(mesh))


def fsdp(mesh: Mesh, tree: Any) -> Any:
  """Fully sharded: each array of `tree` (arrays or abstract) split over
  every device of the mesh on its largest axis that their number divides,
  replicated where none does. For a target's params too large for one
  device; the step gathers them where it uses them."""
  n = mesh.size

  def one(x):
    shape = tuple(x.shape)
    axes = [a for a in range(len(shape)) if shape[a] % n == 0]
    if not axes:
      return replicated(mesh)
    spec = [None] * len(shape)
    spec[max(axes, key=lambda a: shape[a])] = (DATA, COMPONENT)
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree.map(one, tree)
