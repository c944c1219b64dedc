"""The family of targets no config ships: its members' sizes and numbers of
components, and `scripts/family.py --quick` end to end."""

import json
import pathlib
import subprocess
import sys

import flax.serialization
import numpy as np
import pytest

from apd_jax.cli import family
from apd_jax.cli import scoreboard

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = str(ROOT / "configs")


@pytest.mark.parametrize("method,tms_c,resid_c", [
    ("spd", 4, 1.0),     # SPD: C 20 on TMS 5-2, 100 on 100 features
    ("apd", 1, 1.3)])    # APD: C 5 on TMS 5-2, 130 on 100 features
def test_members_scale_the_paper_configs(method, tms_c, resid_c):
  entries = family.family(method, CONFIGS, {"steps": 123})
  names = [e.name for e in entries]
  assert len(names) == 2 * len(family.TMS_SIZES) + len(family.RESID_SIZES)
  for e in entries:
    c = scoreboard.entry_config(e, CONFIGS, 3, quick=False)
    f = c.target.n_features
    assert c.steps == 123 and c.sweep.seed == (0, 1, 2)
    assert c.sweep.target_per_seed
    if e.name.startswith("tms_"):
      assert f"tms_{f}_{c.target.n_hidden}" == e.name.split(":")[0]
      assert c.method.n_components == tms_c * f
      assert (c.target.n_hidden_layers == 1) == e.name.endswith(":identity")
      ok = dict(mmcs=0.9995, ml2r=1.0)
      assert e.success(ok) and not e.success(dict(ok, ml2r=0.5))
    else:
      assert c.method.n_components == int(np.ceil(resid_c * f))
      assert (f, c.target.d_resid, c.target.d_mlp) in family.RESID_SIZES
      key = e.shown[0]
      assert e.success({key: f}) and not e.success({key: f - 1})
  with pytest.raises(ValueError, match="no paper configs"):
    family.family("nope", CONFIGS)


def test_quick_script_trains_each_seed_its_own_target_of_the_size(tmp_path):
  run = subprocess.run(
      [sys.executable, "scripts/family.py", f"--workdir={tmp_path}",
       "--method=spd", "--quick", "--seeds=2", "--only=tms_10_4",
       "--set=method.importance_coeff=1e-3", "--set=figures=False"],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  board = json.loads((tmp_path / "scoreboard.json").read_text())
  (row,) = board["entries"]
  assert row["entry"] == "tms_10_4" and row["seeds"] == 2
  config = json.loads((tmp_path / "tms_10_4" / "config.json").read_text())
  assert config["method"]["importance_coeff"] == 1e-3
  assert config["method"]["n_components"] == 40
  assert config["figures"] is False and not list(tmp_path.glob("**/*.png"))
  targets = []
  for seed in (0, 1):
    path = tmp_path / "tms_10_4" / "targets" / f"seed_{seed}"
    raw = (path / "target_params.msgpack").read_bytes()
    W = np.asarray(flax.serialization.msgpack_restore(raw)["W"])
    assert W.shape == (4, 10)
    targets.append(W)
  assert not np.allclose(*targets)
  assert "`tms_10_4`" in (tmp_path / "scoreboard.md").read_text()
