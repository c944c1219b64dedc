"""On several devices a sweep's runs are split over the mesh's data axis and
each run's components over its component axis; results do not change."""

import functools
import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import cache_env
from conftest import xla_flags

ROOT = pathlib.Path(__file__).parents[2]

SCRIPT = textwrap.dedent("""
    import json, sys, jax
    import apd_jax
    from apd_jax.engine import sweep
    from apd_jax.targets import tms
    from apd_jax.training import sharding
    method_name, component = sys.argv[1], int(sys.argv[2])
    params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
    method = dict(
        apd=lambda: apd_jax.APD(n_components=6, topk=0.5, rank=2),
        spd=lambda: apd_jax.SPD(n_components=6, importance_coeff=3e-3),
        vpd=lambda: apd_jax.VPD(n_components=6, importance_coeff=1e-3,
                                source_warmup_frac=0.0,
                                faithfulness_warmup_steps=10))[method_name]()
    mesh = (None if component == 0 else
            sharding.make_mesh(component=component))
    r = sweep.decompose_sweep(
        tms.apply, params, tms.sampler(n_features=5, feature_probability=0.05),
        sweep={"seed": (0, 1, 2)}, include="W", method=method,
        training=apd_jax.Training(steps=20, batch_size=128, lr=0.01,
                                  log_every=10, eval_batches=1, mesh=mesh))
    first = jax.tree.leaves(r.decompositions[0].components)[0]
    print(json.dumps(dict(devices=jax.device_count(), leaves=[
        [a.tolist() for a in jax.tree.leaves(d.components)]
        for d in r.decompositions],
        shard_c=sorted({s.data.shape[0] for s in first.addressable_shards}))))
""")


@functools.cache     # the one-device runs serve two tests each
def run(n_devices, method="apd", component=0):
  env = {"XLA_FLAGS": xla_flags(
             f"--xla_force_host_platform_device_count={n_devices}"),
         "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **cache_env()}
  out = subprocess.run(
      [sys.executable, "-c", SCRIPT, method, str(component)], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def assert_same(a, b):
  for run_a, run_b in zip(a["leaves"], b["leaves"], strict=True):
    for x, y in zip(run_a, run_b, strict=True):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_sharded_sweep_equals_one_device():
  one, two = run(1, "apd"), run(2, "apd")   # 3 runs over 2: padded to 4
  assert (one["devices"], two["devices"]) == (1, 2)
  assert_same(two, one)


@pytest.mark.parametrize("method", ["apd", "spd", "vpd"])
def test_runs_and_components_sharded_equal_one_device(method):
  # 2 × 2 mesh: 3 runs (padded to 4) over the data axis, C = 6 over 2.
  one, four = run(1, method), run(4, method, component=2)
  assert four["devices"] == 4
  assert (one["shard_c"], four["shard_c"]) == ([6], [3])   # C split in 2
  assert_same(four, one)


def test_component_axis_must_divide_c():
  with pytest.raises(AssertionError, match="divisible by the mesh's "
                     "component axis"):
    run(4, "apd", component=4)
