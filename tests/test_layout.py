"""The package's layers import only downward, and no module imports itself
back through others (an AST scan of every `apd_jax` import, including those
inside functions)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "apd_jax"
# Lower layers never import higher ones; a layer may import itself.
LAYERS = {"core": 0, "fast": 1, "analysis": 1, "models": 1, "methods": 2,
          "training": 3, "engine": 4, "targets": 5, "cli": 6}
TOP = 7   # apd_jax/__init__.py and apd_jax/main.py


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """The `apd_jax` modules `path` imports (a `from pkg import name` counts
  as `pkg.name` when that is a module)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("apd_jax")}
    elif isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith("apd_jax")):
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        found.add(sub if sub in MODULES else node.module)
  return found - {"apd_jax"}


def _layer(module: str) -> int:
  parts = module.split(".")
  if len(parts) == 1 or parts[1] not in LAYERS:
    return TOP
  return LAYERS[parts[1]]


FILES = sorted(ROOT.rglob("*.py"))
MODULES = {_module(p) for p in FILES}
GRAPH = {_module(p): _imports(p) for p in FILES}


def test_every_subpackage_has_a_layer():
  subpackages = {p.parent.name for p in FILES if p.parent != ROOT}
  assert subpackages == set(LAYERS)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
  upward = [m for m in GRAPH[module] if _layer(m) > _layer(module)]
  assert not upward, f"{module} imports the higher layer(s) {upward}"


def test_no_import_cycle():
  state = {}

  def visit(m, path):
    state[m] = "open"
    for n in sorted(GRAPH.get(m, ())):
      if n == m or n not in GRAPH:
        continue
      if state.get(n) == "open":
        raise AssertionError(f"import cycle: {' -> '.join(path + [n])}")
      if n not in state:
        visit(n, path + [n])
    state[m] = "done"

  for m in sorted(GRAPH):
    if m not in state:
      visit(m, [m])
