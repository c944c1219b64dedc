"""A finished decomposition saved, then loaded in another process."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from apd_jax.core.target import Target
from apd_jax.engine import api
from apd_jax.engine import export
from apd_jax.methods.apd import APD
from apd_jax.targets import tms
from apd_jax.training.options import Training

ROOT = pathlib.Path(__file__).parents[2]
LOAD = """
import json, sys
import jax
from apd_jax.engine import export
from apd_jax.targets import tms
from apd_jax.core.target import Target
r = export.load(sys.argv[1])
x = tms.sample(jax.random.PRNGKey(7), 16, n_features=5,
               feature_probability=0.3)
print(json.dumps(dict(attr=r.attributions(x).tolist(),
                      y=r.apply(x, r.topk_mask(x)).tolist(),
                      metrics=r.metrics, steps=[h["step"] for h in r.history],
                      topk=r.method.topk, names=list(r.target.names),
                      config=export.load_config(sys.argv[1]))))
"""


@pytest.fixture(scope="module")
def result():
  params, _ = tms.train(jax.random.PRNGKey(0), n_features=5, n_hidden=2,
                        steps=200)
  return api.decompose(
      tms.apply, params, tms.sampler(n_features=5, feature_probability=0.05),
      include="W", method=APD(n_components=5, topk=0.5, rank=2),
      training=Training(steps=20, batch_size=64, log_every=10,
                        eval_batches=1))


def test_another_process_loads_the_same_decomposition(result, tmp_path):
  export.save(result, str(tmp_path), config={"seed": 0})
  run = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  got = json.loads(run.stdout.splitlines()[-1])
  x = tms.sample(jax.random.PRNGKey(7), 16, n_features=5,
                 feature_probability=0.3)
  np.testing.assert_allclose(got["attr"], result.attributions(x), rtol=1e-6)
  np.testing.assert_allclose(got["y"], result.apply(x, result.topk_mask(x)),
                             rtol=1e-6)
  assert got["metrics"] == json.loads(json.dumps(result.metrics))
  assert got["steps"] == [10, 20]
  assert got["topk"] == 0.5 and got["names"] == ["['W']"]
  assert got["config"] == {"seed": 0}


def test_a_lambda_target_needs_its_apply_fn_again(result, tmp_path):
  fn = lambda p, x: tms.apply(p, x)  # noqa: E731
  lam = dataclasses.replace(result, target=Target(
      fn, result.target.params, result.target.names))
  export.save(lam, str(tmp_path))
  with pytest.raises(ValueError, match="not an importable function; pass "
                     r"it as load\(\.\.\., apply_fn=\.\.\.\)"):
    export.load(str(tmp_path))
  back = export.load(str(tmp_path), apply_fn=fn)
  assert back.method == result.method and back.plan == result.plan
  for a, b in zip(jax.tree.leaves(back.components),
                  jax.tree.leaves(result.components), strict=True):
    np.testing.assert_array_equal(a, b)
  assert export.load_config(str(tmp_path)) is None
