"""With several devices the runs axis is sharded; results do not change."""

import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

ROOT = pathlib.Path(__file__).parents[2]

SCRIPT = textwrap.dedent("""
    import json, jax
    from apd_jax.engine import sweep
    from apd_jax.targets import tms
    params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
    r = sweep.decompose_sweep(
        tms.apply, params, tms.sampler(n_features=5, feature_probability=0.05),
        sweep={"seed": (0, 1, 2)}, include="W", n_components=5, topk=0.5,
        rank=2, steps=20, batch_size=128, lr=0.01, log_every=10,
        eval_batches=1)
    print(json.dumps(dict(devices=jax.device_count(), U=[
        d.components.U["['W']"].tolist() for d in r.decompositions])))
""")


def run(n_devices):
  env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}",
         "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_sweep_equals_one_device():
  one, two = run(1), run(2)       # 3 runs over 2 devices: padded to 4
  assert (one["devices"], two["devices"]) == (1, 2)
  np.testing.assert_allclose(two["U"], one["U"], rtol=1e-5, atol=1e-6)
