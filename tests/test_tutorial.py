"""The README's tutorial is the code of scripts/tutorial.py, and it runs."""

import importlib.util
import pathlib
import re
import textwrap

ROOT = pathlib.Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "tutorial.py"


def tutorial_code(script=SCRIPT):
  text = script.read_text()
  body = re.search(r"# --- tutorial start ---\n(.*?)  # --- tutorial end",
                   text, re.S).group(1)
  return textwrap.dedent(body)


def test_readme_shows_the_script_code():
  readme = (ROOT / "docs" / "your_model.md").read_text()
  assert f"```python\n{tutorial_code()}```" in readme


def test_tutorial_runs(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("tutorial", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  result, top = module.tutorial(str(tmp_path), steps=200, model_steps=300)
  assert result.component_weights["['W']"].shape == (5, 2, 5)
  assert result.metrics["steps"] == 200
  assert sorted(top) == [0, 1, 2, 3, 4]
  assert all(0 <= c < 5 for c in top.values())
  assert (tmp_path / "components.png").stat().st_size > 0
  out = capsys.readouterr().out
  assert "MMCS" in out and "feature -> component" in out
  assert "APD decomposition on 4096 fresh examples" in out
  assert "eff.rank W" in out and "component " in out
