"""Sphinx configuration of the apd_jax documentation.

Build: python -m sphinx -W --keep-going -b html docs build/docs
"""

import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import apd_jax  # noqa: E402

project = "apd_jax"
author = "apd_jax authors"
copyright = "apd_jax authors"  # noqa: A001
release = apd_jax.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["build", "_build", "Thumbs.db", ".DS_Store"]

# MyST: $...$ and $$...$$ maths, anchors for "page.md#section" links.
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

# Docstrings are Google style; `name` in a docstring is code.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
default_role = "code"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": False}

html_theme = "alabaster"
html_title = f"apd_jax {release}"


# -- the docstrings' plain-text conventions, read as reStructuredText ---------
#
# The package's docstrings are Google style written as plain text: `x` is
# code, a block indented under a paragraph (after a blank line) is code, and
# `**name` means keyword arguments. Before napoleon reads them, single
# backticks become inline literals (so napoleon does not split a property's
# first line at a colon inside them), such blocks become literal blocks and
# `**name` outside code is escaped. A section header with a note,
# `Attributes (defaults in brackets):`, becomes the note and the header.

_SECTIONS = ("Args", "Arguments", "Attributes", "Returns", "Raises",
             "Yields", "Example", "Examples", "Note", "Notes")
_SECTION = re.compile(r"^(\s*)(%s):\s*$" % "|".join(_SECTIONS))
_SECTION_NOTE = re.compile(r"^(\s*)(%s)\s+\((.+)\):\s*$" % "|".join(_SECTIONS))
_CODE = re.compile(r"(?<![:`\w\\])`([^`\s](?:[^`]*?[^`\s])?)`(?![`_\w])")
_KWARGS = re.compile(r"(?<![\w*\\`])\*\*(?=[A-Za-z_]\w*(?![\w*]))")


def _inline(line):
  """Single-backtick code as inline literals; a `**name` (keyword
  arguments) outside code escaped, unless the line closes a `**`."""
  parts = re.split(r"(``.*?``)", _CODE.sub(r"``\1``", line))
  for i in range(0, len(parts), 2):
    if parts[i].count("**") == 1:
      parts[i] = _KWARGS.sub(r"\\*\\*", parts[i])
  return "".join(parts)


def _indent(line):
  return len(line) - len(line.lstrip())


def rst_lines(lines):
  """`lines` of a docstring in the package's conventions, as RST."""
  out = []
  para = None          # (indent, first line, last line) of the last paragraph
  block = None         # indent that a line must exceed to stay in a block
  section = None       # indent of the current Google section header
  blank = True
  for line in lines:
    if not line.strip():
      out.append(line)
      blank = True
      continue
    ind = _indent(line)
    if block is not None:
      if ind > block:
        out.append(line)
        blank = False
        continue
      block = None
    if section is not None and ind <= section:
      section = None
    note = _SECTION_NOTE.match(line)
    if note:
      pad, name, text = note.groups()
      out += [f"{pad}{text[0].upper()}{text[1:]}.", "", f"{pad}{name}:"]
      section, para, blank = len(pad), None, False
      continue
    if _SECTION.match(line):
      section = ind
    if blank and para is not None and section is None and ind > para[0]:
      first, last = para[1].lstrip(), para[2].rstrip()
      if not (first.startswith("..") or last.endswith("::")):
        out += [" " * para[0] + "::", ""]
      block = para[0]
      out.append(line)
      blank = False
      continue
    if blank:
      para = (ind, line, line)
    else:
      para = (para[0], para[1], line) if para else (ind, line, line)
    if line.rstrip().endswith("::") or line.lstrip().startswith(".. "):
      block = para[0]
      out.append(line)
    else:
      out.append(_inline(line))
    blank = False
  return out


def _convert(app, what, name, obj, options, lines):
  lines[:] = rst_lines(lines)


def setup(app):
  app.connect("autodoc-process-docstring", _convert, priority=100)

