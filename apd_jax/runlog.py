"""A run's logs, written by process 0 only: `metrics.jsonl` (one line per
log) and a TensorBoard event file with the same scalars and, at the end, the
run's figures as images."""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from apd_jax import tensorboard

# Record fields that are not curves worth a TensorBoard plot.
_NOT_SCALARS = ("step", "elapsed_s")
# The figures a run may leave in its workdir, logged as TensorBoard images.
FIGURES = ("components", "contributions", "scrubbing", "losses")


def is_writer() -> bool:
  """Whether this process writes files (only process 0 does)."""
  return jax.process_index() == 0


class RunLog:
  """`metrics.jsonl` and TensorBoard scalars for one run in `workdir`."""

  def __init__(self, workdir: str, append: bool = False):
    """`append`: continue an existing `metrics.jsonl` (a resumed run)."""
    self.tb = tensorboard.Writer(workdir)
    self._jsonl = None
    if is_writer():
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(  # noqa: SIM115
          os.path.join(workdir, "metrics.jsonl"), "a" if append else "w")

  def write(self, step: int, record: dict[str, Any]) -> None:
    """One log line; usable as `decompose`'s callback."""
    if self._jsonl is not None:
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
    self.tb.scalars(step, {k: v for k, v in record.items()
                           if k not in _NOT_SCALARS
                           and isinstance(v, (int, float))})

  def figures(self, step: int, workdir: str) -> None:
    """Each of `FIGURES` found in `workdir` (as `<name>.png`), as an image."""
    for name in FIGURES:
      path = os.path.join(workdir, f"{name}.png")
      if os.path.exists(path):
        with open(path, "rb") as f:
          self.tb.image(step, name, f.read())

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    self.tb.close()

  def __enter__(self) -> RunLog:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
