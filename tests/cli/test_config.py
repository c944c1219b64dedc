"""Config files: typed arguments, a section per method, one field per
option."""

import dataclasses

import pytest

from apd_jax import APD
from apd_jax import Training
from apd_jax.cli import config
from configs import tms_5_2


def test_parse_arg_types_and_rejects_unknown_names():
  args = config.parse_arg("identity,seed=3,scale=0.5", identity=False,
                          quick=False, seed=0, scale=1.0)
  assert (args.identity, args.quick, args.seed, args.scale) == (
      True, False, 3, 0.5)
  assert config.parse_arg(None, quick=False).quick is False
  with pytest.raises(ValueError, match="unknown config argument 'quikc'"):
    config.parse_arg("quikc", quick=False)
  with pytest.raises(ValueError, match="seed='x': not a int"):
    config.parse_arg("seed=x", seed=0)
  with pytest.raises(ValueError, match="'seed' needs a value"):
    config.parse_arg("seed", seed=0)


def test_parse_sets_reads_python_literals_else_strings():
  assert config.parse_sets(["method.ci_hidden=(16,)", "lr=1e-3",
                            "method.ci_fn=scalar", "figures=False",
                            "steps=10_000"]) == {
      "method.ci_hidden": (16,), "lr": 1e-3, "method.ci_fn": "scalar",
      "figures": False, "steps": 10_000}
  with pytest.raises(ValueError, match="'steps': expected KEY=VALUE"):
    config.parse_sets(["steps"])
  with pytest.raises(ValueError, match="expected KEY=VALUE"):
    config.parse_sets(["=3"])


def test_default_config_holds_every_option_once():
  c = config.default_config()
  for f in dataclasses.fields(Training):
    if f.name == "mesh":      # the config's mesh is the mesh's shape
      assert set(c.mesh) == {"data", "component"}
      continue
    assert (f.name in c) == (f.name not in config.NOT_IN_CONFIG), f.name
  assert set(c.method) == {f.name for f in dataclasses.fields(APD)} | {
      "name"}
  assert not set(c.method) & {f.name for f in dataclasses.fields(Training)}
  method, training = config.method_and_training(c)
  assert method == APD(n_components=5, topk=0.211, simplicity_coeff=0.7,
                       hidden_acts="post_relu")
  assert (training.steps, training.lr, training.checkpoint_every) == (
      20_000, 3e-2, 5000)


def test_paper_config_makes_the_paper_objects():
  method, training = config.method_and_training(tms_5_2.get_config())
  assert (method.n_components, method.topk, method.rank) == (5, 0.211, 3)
  assert method.attribution_point == "components"
  assert (training.steps, training.batch_size, training.warmup_frac) == (
      20_000, 2048, 0.05)
  quick = tms_5_2.get_config("identity,quick")
  assert quick.steps == 2000 and quick.target.n_hidden_layers == 1
