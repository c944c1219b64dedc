"""The mesh, the shardings of a run, and 1- vs 8-device equivalence."""

import types

import jax
import numpy as np
import pytest
import scale_worker

from apd_jax.core import components as C
from apd_jax.training import sharding
from apd_jax.training import train
from apd_jax.training.options import Training


def test_mesh_takes_every_device_and_names_its_axes():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ("data", "component")
  assert dict(mesh.shape) == {"data": jax.device_count(), "component": 1}
  with pytest.raises(ValueError, match=r"data×component = 2×1 must equal"):
    sharding.make_mesh(data=2)
  with pytest.raises(ValueError, match=r"component=3 must divide"):
    sharding.make_mesh(component=3)


def test_mesh_axes_must_divide_batch_and_components():
  mesh = types.SimpleNamespace(shape={"data": 4, "component": 2})
  sharding.check_sizes(mesh, batch_size=64, n_components=8)
  with pytest.raises(ValueError, match=r"batch_size=30 .* data axis \(4"):
    sharding.check_sizes(mesh, batch_size=30, n_components=8)
  with pytest.raises(ValueError, match=r"n_components=5 .* component axis"):
    sharding.check_sizes(mesh, batch_size=64, n_components=5)


def test_factors_and_adam_moments_are_split_over_components():
  mesh = sharding.make_mesh()
  opt = Training(lr=1e-2, steps=100, warmup_frac=0.1).make_optimizer()

  def new():
    comps = C.init_random(jax.random.PRNGKey(0), {"a": (2, 5), "b": (5, 3)},
                          n_components=4, rank={"a": 2, "b": 1})
    return train.TrainState.create(comps, opt)

  state = sharding.init(new, lambda s: sharding.train_state(mesh, s, opt))
  specs = jax.tree.map(lambda a: tuple(a.sharding.spec), state)
  assert specs.step == ()
  assert specs.components.U == {"a": ("component",), "b": ("component",)}
  adam = specs.opt_state[0]
  assert adam.count == ()
  for moment in (adam.mu, adam.nu):
    assert moment.U == moment.V == {"a": ("component",), "b": ("component",)}


def test_put_then_gather_returns_the_values():
  mesh = sharding.make_mesh()
  tree = {"x": np.arange(24, dtype=np.float32).reshape(4, 6),
          "k": np.uint32([1, 2])}
  spec = {"x": sharding.batch(mesh), "k": sharding.replicated(mesh)}
  back = sharding.gather(sharding.put(tree, spec))
  for k in tree:
    np.testing.assert_array_equal(back[k], tree[k])
    assert back[k].dtype == tree[k].dtype


def test_eight_devices_give_the_one_device_run(tmp_path):
  """Data-parallel (8×1) and data × component (4×2) runs on 8 simulated
  CPU devices against the 1-device run of this process."""
  run = scale_worker.launch(tmp_path / "out", "--devices=8", "--meshes=8x1,4x2")
  assert run.returncode == 0, run.stderr[-3000:]
  one = scale_worker.reference()
  assert one["history"][-1]["step"] == scale_worker.STEPS
  for mesh in ("8x1", "4x2"):
    out = scale_worker.load(tmp_path / f"out.{mesh}.npz")
    assert (out["processes"], out["devices"]) == (1, 8)
    scale_worker.assert_same_run(out, one)
