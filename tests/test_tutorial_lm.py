"""The README's language-model tutorial is the code of
scripts/tutorial_lm.py, and it runs (on a tiny budget)."""

import importlib.util
import pathlib

import numpy as np
import pytest
from test_tutorial import tutorial_code

ROOT = pathlib.Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "tutorial_lm.py"


def test_readme_shows_the_script_code():
  readme = (ROOT / "docs" / "your_model.md").read_text()
  assert f"```python\n{tutorial_code(SCRIPT)}```" in readme


@pytest.mark.long
def test_tutorial_runs(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("tutorial_lm", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  result, ce = module.tutorial(str(tmp_path), steps=4, model_steps=30,
                               train_bytes=200_000)
  names = [n.split("'")[-4] for n in result.target.names]
  assert sorted(names) == ["key", "mlp_in", "mlp_out", "out", "query",
                           "value"]
  assert result.metrics["steps"] == 4
  assert ce["heldout_nats_per_byte_target"] < np.log(256)
  assert np.isfinite(ce["heldout_nats_per_byte_masked"])
  assert (tmp_path / "top_contexts.html").stat().st_size > 0
  out = capsys.readouterr().out
  assert "SPD decomposition on" in out and "heldout_nats_per_byte" in out
