"""A step too large for one device: with the target's params sharded over
8 simulated devices (FSDP) it equals the 1-device step; and the planner
that compiles it from abstract arguments.

    python tests/training/test_plan_scale.py OUT.npz   # the 8-device side
"""

import fcntl
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from apd_jax.cli import plan_scale
from apd_jax.core import selection
from apd_jax.core.target import Target
from apd_jax.engine import api
from apd_jax.models import transformer
from apd_jax.models.transformer import TransformerConfig
from apd_jax.training import sharding
from apd_jax.training.options import Training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = TransformerConfig(vocab=64, n_layers=1, d_model=32, n_heads=2,
                           d_mlp=64, context=8, tied=False)
BATCH, STEPS = 8, 10
MESH = (2, 4)        # data × component
TINY = plan_scale.at_depth(plan_scale.SHAPES["tiny"], 1)


def setup():
  """`(method, training, target, sample_fn, state, key)` of a small SPD
  run on the MLP of a 1-block LM (C = 128), with random target params and
  factors (drawn on the host: nothing to compile)."""
  params = fill(jax.eval_shape(lambda k: transformer.init(k, CONFIG),
                               jax.random.PRNGKey(0)), seed=0)
  method = plan_scale.method_for(CONFIG)
  # Plain gradient descent: the new components show the gradients as they
  # are (Adam's first step would show little more than their signs).
  training = Training(batch_size=BATCH, steps=STEPS, lr=1.0,
                      optimizer=optax.sgd)
  names = selection.select_leaves(params, plan_scale.SCOPES["mlp"])
  target = Target(plan_scale.lm_apply(CONFIG), params, names)
  sample_fn = plan_scale.sampler(CONFIG)
  init = plan_scale.make_init(method, target.apply_fn, names, sample_fn,
                              api.optimizer(method, training))
  state = fill(jax.eval_shape(init, params, jax.random.PRNGKey(2)), seed=1)
  return method, training, target, sample_fn, state, jax.random.PRNGKey(1)


def fill(tree, seed: int):
  """`tree`'s shapes filled with N(0, 0.3²) floats and zero integers."""
  rng = np.random.default_rng(seed)

  def one(a):
    if np.issubdtype(a.dtype, np.floating):
      return (0.3 * rng.standard_normal(a.shape)).astype(a.dtype)
    return np.zeros(a.shape, a.dtype)

  return jax.tree.map(one, tree)


def flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
          jax.tree_util.tree_leaves_with_path(sharding.gather(tree))}


def eight_devices(out: str) -> None:
  """On the 2 × 4 mesh of this process's 8 devices: one step with the
  target's params passed sharded, and the plan of the tiny shape; writes
  the loss, the new components, the arguments' specs and the plan."""
  method, training, target, sample_fn, state, key = setup()
  opt = api.optimizer(method, training)
  mesh = sharding.make_mesh(*MESH)
  ins, outs = plan_scale.step_shardings(mesh, target.params, state, opt)
  args = sharding.put((target.params, state, key), ins)
  step = plan_scale.make_step(method, target.apply_fn, target.names,
                              sample_fn, BATCH, opt, mesh, steps=STEPS)
  new, metrics = jax.jit(step, in_shardings=ins, out_shardings=outs)(*args)
  params, state, _ = args
  specs = {k: [str(tuple(a.sharding.spec)) for a in jax.tree.leaves(tree)]
           for k, tree in (("target", params),
                           ("components", state.components))}
  plan = plan_scale.plan(TINY, "layer", mesh, batch_size=BATCH)
  np.savez(out, loss=np.asarray(metrics["loss"]), devices=jax.device_count(),
           specs=json.dumps(specs), plan=json.dumps(plan),
           **flat(new.components))


class Worker:
  """`eight_devices` in a process of its own, started at once (the tests
  compute the 1-device side meanwhile). Run once per session: under
  pytest-xdist the first worker to come runs it while holding `lock`,
  which it lets go once the result is read; the others wait on the lock
  and read the file it wrote (or, if it failed, run it again themselves)."""

  def __init__(self, out, lock=None):
    self.out, self.lock, self.proc, self.got = out, lock, None, None
    if os.path.exists(out):
      self.release()
      return
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
               + " --xla_force_host_platform_device_count=8")
    self.proc = subprocess.Popen([sys.executable, __file__, str(out)],
                                 env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)

  def release(self):
    if self.lock is not None:
      self.lock.close()             # lets go of the flock
      self.lock = None

  def result(self):
    if self.got is None:
      try:
        if self.proc is not None:
          _, err = self.proc.communicate(timeout=300)
          if self.proc.returncode != 0 and os.path.exists(self.out):
            os.remove(self.out)     # a failed run leaves nothing to share
          assert self.proc.returncode == 0, err[-3000:]
        self.got = np.load(self.out)
      finally:
        self.release()
    return self.got


def shared_dir(tmp_path_factory):
  """A folder of this session that every xdist worker sees."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
  shared = shared_dir(tmp_path_factory)
  lock = open(shared / "eight_devices.lock", "a")  # noqa: SIM115
  fcntl.flock(lock, fcntl.LOCK_EX)
  w = Worker(shared / "eight_devices.npz", lock)
  yield w
  if w.proc is not None and w.proc.poll() is None:
    w.proc.kill()
  w.release()


def test_sharded_step_on_eight_devices_equals_one_device(worker):
  method, training, target, sample_fn, state, key = setup()
  plan = method.plan(target, sample_fn, BATCH, state.components)
  step = api.make_train_step(method, plan, target, sample_fn, training)
  new, metrics = jax.jit(step)(state, key)
  got = worker.result()
  assert int(got["devices"]) == 8
  specs = json.loads(str(got["specs"]))
  # Every leaf of the target has an axis of 8k (FSDP over all 8 devices);
  # every factor and causal-importance MLP its C axis over `component`.
  assert all("('data', 'component')" in s for s in specs["target"])
  assert set(specs["components"]) == {"('component',)"}
  np.testing.assert_allclose(got["loss"], metrics["loss"], rtol=1e-5)
  want = flat(new.components)
  assert sorted(want) == sorted(k for k in got.files if k.startswith("."))
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5, err_msg=k)


def test_plan_of_a_tiny_shape_on_eight_devices(worker):
  row = json.loads(str(worker.result()["plan"]))
  params = jax.eval_shape(lambda k: transformer.init(k, TINY),
                          jax.random.PRNGKey(0))
  assert row["params"] == sum(a.size for a in jax.tree.leaves(params))
  C, d, m = 4 * TINY.d_model, TINY.d_model, TINY.d_mlp
  gates = 3 * 16 + 1                    # w1, b1, w2 [C, 16] and b2 [C]
  assert row["trained"] == 2 * C * (d + m + gates)
  # Float32 target params, and factors with Adam's two moments, each
  # split over 8 devices at best.
  assert row["argument"] >= 4 * (row["params"] + 3 * row["trained"]) / 8
  assert row["temp"] > 0 and row["flops"] > 0
  assert plan_scale.total(row) >= row["argument"] + row["temp"]
  text = plan_scale.table([("tiny", "layer", 8, dict(row, how="compiled"))],
                          BATCH, TINY.context)
  assert "| tiny | 0.00B | layer | 0.00B | 8 | 2 × 4 |" in text


def test_fsdp_splits_the_largest_divisible_axis():
  mesh = sharding.make_mesh()
  n = mesh.size
  tree = {"w": jax.ShapeDtypeStruct((3 * n, 5 * n), np.float32),
          "b": jax.ShapeDtypeStruct((7,), np.float32)}
  specs = jax.tree.map(lambda s: tuple(s.spec), sharding.fsdp(mesh, tree))
  assert specs["w"] == (None, ("data", "component"))
  if n > 1:
    assert specs["b"] == ()


def test_fit_extrapolates_flops_quadratically_and_memory_linearly():
  depths = (1, 2, 3)
  linear = lambda L: 5.0 + 3.0 * L  # noqa: E731
  rows = [{k: linear(L) for k in (*plan_scale.MEMORY, "params", "trained")}
          | {"flops": linear(L) + 2.0 * L * L, "compile_s": 1.0}
          for L in depths]
  got = plan_scale.fit(depths, rows, 32)
  assert got["flops"] == pytest.approx(linear(32) + 2.0 * 32 * 32)
  assert got["temp"] == pytest.approx(linear(32))
  assert got["compile_s"] == 3.0


if __name__ == "__main__":
  eight_devices(sys.argv[1])
