"""SPD through the engine: training lowers every term, sweeps, resume,
export, devices, and the result's queries."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cache_env
from conftest import xla_flags

import apd_jax
from apd_jax import SPD
from apd_jax import Training
from apd_jax.engine import export
from apd_jax.engine import sweep
from apd_jax.targets import tms
from apd_jax.training import distributed

ROOT = pathlib.Path(__file__).parents[2]
W = "['W']"
PARAMS = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
SAMPLE = tms.sampler(n_features=5, feature_probability=0.2)
METHOD = SPD(n_components=6, importance_coeff=1e-2, importance_p=1.0,
             gate_hidden=4)


def training(**kw):
  return Training(**{**dict(steps=40, batch_size=64, lr=1e-2, log_every=10,
                            eval_batches=1, progress=False), **kw})


def run(**kw):
  return apd_jax.decompose(tms.apply, PARAMS, SAMPLE, include="W",
                           method=METHOD, training=training(**kw))


@pytest.fixture(scope="module")
def result():
  return run()


def test_a_few_steps_lower_every_term():
  r = apd_jax.decompose(tms.apply, PARAMS, SAMPLE, include="W",
                        method=METHOD.replace(importance_coeff=1.0),
                        training=training(steps=200, log_every=20))
  first, last = r.history[0], r.history[-1]
  for term in ("faithfulness", "stochastic", "layerwise", "importance",
               "loss"):
    assert last[term] < first[term], (term, first[term], last[term])


def test_result_queries(result):
  x = jnp.eye(5)
  G = result.causal_importances(x)
  assert sorted(G) == [f"{W}#0", f"{W}#1"]
  assert all(g.shape == (5, 6) for g in G.values())
  assert all(float(g.min()) >= 0 and float(g.max()) <= 1 for g in G.values())
  active = result.active(x)
  np.testing.assert_array_equal(active[f"{W}#0"], G[f"{W}#0"] > 0.1)
  assert result.scores(x).keys() == G.keys() == result.groups.keys()
  ones = {k: jnp.ones_like(g) for k, g in G.items()}
  np.testing.assert_allclose(result.apply(x, ones), result.apply(x),
                             rtol=1e-5, atol=1e-6)
  m = result.metrics
  assert m["alive"] == m[f"alive/{W}#0"] + m[f"alive/{W}#1"] <= 12
  assert {"faithfulness", "stochastic_recon", "layerwise_recon",
          "ci_masked_recon", "l0", "threshold"} <= set(m)
  with pytest.raises(AttributeError, match="causal_importances"):
    result.attributions(x)
  assert len(repr(result)) < 1000


def test_keyword_shortcut_fills_training_only():
  method, t = apd_jax.engine.api.split_options(METHOD, None,
                                               dict(steps=3))
  assert method == METHOD and t.steps == 3
  with pytest.raises(ValueError, match="importance_coeff .a field of SPD"):
    apd_jax.engine.api.split_options(METHOD, None,
                                     dict(importance_coeff=0.5))
  with pytest.raises(ValueError, match="unknown options \\['topk'\\]"):
    apd_jax.engine.api.split_options(METHOD, None, dict(topk=1.0))


def test_sweep_runs_equal_separate_runs():
  s = sweep.decompose_sweep(
      tms.apply, PARAMS, SAMPLE, include="W", method=METHOD,
      training=training(steps=10), sweep={"seed": (0, 1),
                                          "importance_coeff": (1e-2,)})
  for d, seed in zip(s.decompositions, (0, 1), strict=True):
    alone = run(steps=10, seed=seed)
    for a, b in zip(jax.tree.leaves(d.components),
                    jax.tree.leaves(alone.components), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_sigterm_then_rerun_resumes_to_the_uninterrupted_result(tmp_path,
                                                                 result):
  d = str(tmp_path / "ckpt")

  def term_at_20(step, record):
    del record
    if step == 20:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(distributed.Preempted):
    run(checkpoint_dir=d, callback=term_at_20)
  resumed, whole = run(checkpoint_dir=d), result
  for a, b in zip(jax.tree.leaves(resumed.components),
                  jax.tree.leaves(whole.components), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  timing = ("steps_per_s", "elapsed_s")
  drop = lambda h: [{k: v for k, v in r.items() if k not in timing}  # noqa
                    for r in h]
  assert drop(resumed.history) == drop(whole.history)


def test_export_load_roundtrip(result, tmp_path):
  export.save(result, str(tmp_path / "d"))
  back = export.load(str(tmp_path / "d"))
  assert back.method == result.method and back.plan == result.plan
  x = SAMPLE(jax.random.PRNGKey(5), 16)
  for k, g in result.causal_importances(x).items():
    np.testing.assert_allclose(back.causal_importances(x)[k], g)


def test_dict_n_components_round_trips_through_json(tmp_path):
  m = SPD(n_components={W: 4}, importance_coeff=1e-2)
  r = apd_jax.decompose(tms.apply, PARAMS, SAMPLE, include="W", method=m,
                        training=training(steps=10))
  assert r.components.U[W].shape == (4, 2, 1)
  export.save(r, str(tmp_path / "d"))
  assert export.load(str(tmp_path / "d")).method == m


DEVICES = textwrap.dedent("""
    import json, sys, jax
    import apd_jax
    from apd_jax.targets import tms

    def run(mesh=None):
      params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
      r = apd_jax.decompose(
          tms.apply, params, tms.sampler(n_features=5, feature_probability=0.2),
          include="W", method=apd_jax.SPD(n_components=8, importance_coeff=1e-2,
                                          gate_hidden=4),
          training=apd_jax.Training(steps=20, batch_size=64, lr=1e-2,
                                    log_every=10, eval_batches=1,
                                    progress=False, mesh=mesh))
      return [a.tolist() for a in jax.tree.leaves(r.components)]

    if __name__ == "__main__":
      print(json.dumps(run(apd_jax.make_mesh(*map(int, sys.argv[1:])))))
""")


def test_eight_devices_agree_with_one(tmp_path):
  """The batch over 4 devices and the subcomponents (factors, gates, Adam
  moments) over 2, against this process's single device."""
  script = tmp_path / "devices.py"
  script.write_text(DEVICES)
  env = {"XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=8"),
         "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **cache_env()}
  out = subprocess.run([sys.executable, str(script), "4", "2"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  eight = json.loads(out.stdout.strip().splitlines()[-1])
  scope = {}
  exec(compile(DEVICES, "devices.py", "exec"), scope)  # noqa: S102
  one = scope["run"]()
  for a, b in zip(eight, one, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_readme_spd_snippet_runs(capsys):
  text = (ROOT / "docs" / "methods.md").read_text()
  snippet = re.search(r"## SPD: .*?```python\n(.*?)```", text, re.S).group(1)
  snippet = snippet.replace("steps=10_000", "steps=100").replace(
      "batch_size=4096", "batch_size=256")
  scope = dict(jax=jax, apd_jax=apd_jax, tms=tms, params=PARAMS,
               sample_fn=tms.sampler(n_features=5, feature_probability=0.05))
  exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102
  assert set(scope["G"]) == {f"{W}#0", f"{W}#1"}
  assert scope["G"][f"{W}#0"].shape == (5, 20)
  assert capsys.readouterr().out.strip()
