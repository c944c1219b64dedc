"""The documentation: the Sphinx site builds without a warning and documents
the public API, the README's links resolve, its quick-start commands are the
ones CI runs, and its example runs."""

import inspect
import pathlib
import re
import subprocess
import sys

import apd_jax
from apd_jax import engine

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = ("index", "methods", "your_model", "targets", "cli", "sweeps",
         "scale_out", "language_models", "performance", "scoreboard",
         "architecture", "api")
QUICK_START = (
    "```bash\npip install -e . && python -m apd_jax.main "
    "--config=configs/tms_5_2.py --workdir=runs/tms_5_2\n```",
    "```bash\npip install -e '.[test]' && python -m pytest -q -n 2\n```",
)


def test_docs_build_without_warnings(tmp_path):
  html = tmp_path / "html"
  out = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
       "html", "-d", str(tmp_path / "doctrees"), str(DOCS), str(html)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
  for page in PAGES:
    assert (html / f"{page}.html").stat().st_size > 0, page
  api = (html / "api.html").read_text()
  for name in apd_jax.__all__:
    if not inspect.ismodule(getattr(apd_jax, name)):
      assert f'id="apd_jax.{name}"' in api, name
  for name in getattr(engine, "__all__", ()):
    assert f'id="apd_jax.engine.{name}"' in api, name
  assert 'id="apd_jax.methods.register"' in api


def test_relative_links_resolve():
  for page in [README, *DOCS.glob("*.md")]:
    for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
      if "://" not in link:
        assert (page.parent / link).exists(), f"{page.name}: {link}"


def test_readme_quick_start_commands():
  """The README's two commands; CI runs the second."""
  text = README.read_text()
  for block in QUICK_START:
    assert block in text
  ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
  assert ci == QUICK_START[1].split("\n")[1]


def readme_example() -> str:
  text = README.read_text()
  return re.search(r"## Decompose your own model.*?```python\n(.*?)```",
                   text, re.S).group(1)


def test_readme_example_runs(capsys):
  code = readme_example()
  assert len(code.strip().splitlines()) <= 20
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
  result = scope["result"]
  assert result.metrics["faithfulness"] < 1e-3
  assert result.metrics["steps"] == 2000
  active = scope["result"].active(scope["x"])
  assert set(active) == {""} and active[""].shape == (8, 5)
  assert "APD decomposition on" in capsys.readouterr().out
