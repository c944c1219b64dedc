"""Only `methods/` knows the methods: no other module of the package imports
a method's module, names a method's class, or compares a value with a
method's name (an AST scan; docstrings and comments may speak of them)."""

import ast
import pathlib

import pytest

from apd_jax import methods

ROOT = pathlib.Path(__file__).resolve().parents[1] / "apd_jax"
METHOD_MODULES = {"apd", "spd", "vpd", "apd_objective", "spd_objective",
                  "vpd_objective"}
CLASSES = {"APD", "SPD", "VPD", "SPDParams", "VPDParams"}
NAMES = {n.lower() for n in CLASSES} | CLASSES | set(methods.names())
OUTSIDE = sorted(p for p in ROOT.rglob("*.py")
                 if "methods" not in p.relative_to(ROOT).parts
                 and p != ROOT / "__init__.py")   # the top level re-exports


def _offences(tree: ast.AST) -> list[str]:
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      parts = node.module.split(".")
      if parts[:2] == ["apd_jax", "methods"] and (
          set(parts[2:]) & METHOD_MODULES or
          {a.name for a in node.names} & (METHOD_MODULES | CLASSES)):
        out.append(f"line {node.lineno}: imports {node.module}")
    elif isinstance(node, ast.Name) and node.id in CLASSES:
      out.append(f"line {node.lineno}: names {node.id}")
    elif isinstance(node, ast.Attribute) and node.attr in (
        CLASSES | METHOD_MODULES):
      out.append(f"line {node.lineno}: names .{node.attr}")
    elif isinstance(node, ast.Compare):
      for side in [node.left, *node.comparators]:
        if isinstance(side, ast.Constant) and side.value in NAMES:
          out.append(f"line {node.lineno}: compares with {side.value!r}")
        if isinstance(side, ast.Attribute) and side.attr == "__name__":
          out.append(f"line {node.lineno}: compares a __name__")
  return out


@pytest.mark.parametrize("path", OUTSIDE,
                         ids=[str(p.relative_to(ROOT)) for p in OUTSIDE])
def test_no_module_outside_methods_knows_a_method(path):
  offences = _offences(ast.parse(path.read_text()))
  assert not offences, f"{path.relative_to(ROOT)}: {offences}"


def test_the_scan_finds_what_it_forbids():
  bad = ("from apd_jax.methods.spd import SPD\n"
         "if type(m).__name__ == 'SPD' or config.method == 'spd': pass\n"
         "x = isinstance(m, APD)\n")
  found = _offences(ast.parse(bad))
  assert len(found) == 5, found   # import, 2 compares + __name__, APD
