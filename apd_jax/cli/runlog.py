"""A run's logs, written by process 0 only: `metrics.jsonl` (one line per
log) and TensorBoard event files (tensorboardX) with the same scalars and,
at the end, the run's figures as images and histograms of the attributions
and of each component's use in the top-k masks."""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import jax
import matplotlib.image
import numpy as np
from tensorboardX import SummaryWriter

# Record fields that are not curves worth a TensorBoard plot.
_NOT_SCALARS = ("step", "elapsed_s")
# The figures a run may leave in its workdir, logged as TensorBoard images.
FIGURES = ("components", "contributions", "scrubbing", "losses",
           "causal_importances", "summary", "top_inputs")


def tag(name: str) -> str:
  """`name` as a TensorBoard tag: characters other than letters, digits
  and `_./-` become `_` (`l0/['W']#0` -> `l0/__W___0`)."""
  return re.sub(r"[^A-Za-z0-9_./-]", "_", name)


def is_writer() -> bool:
  """Whether this process writes files (only process 0 does)."""
  return jax.process_index() == 0


def event_files(workdir: str) -> list[str]:
  """The TensorBoard event files in `workdir`."""
  return sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))


class RunLog:
  """`metrics.jsonl` and TensorBoard events for one run in `workdir`."""

  def __init__(self, workdir: str, append: bool = False,
               resumed_at: int | None = None, events: bool = True):
    """`append`: continue an existing `metrics.jsonl` (a resumed run).
    `resumed_at`: the step a resumed run goes on from; its event file
    (named `...resumed_at_<step>`, so that it cannot replace one written in
    the same second) makes TensorBoard hide what the earlier ones hold
    after that step (logged before a kill, and logged again now).
    `events`: False writes no event file (a finished run started again,
    whose events are written)."""
    self._jsonl = self.tb = None
    if is_writer():
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(  # noqa: SIM115
          os.path.join(workdir, "metrics.jsonl"), "a" if append else "w")
      if events:
        resumed = resumed_at is not None
        self.tb = SummaryWriter(
            workdir, flush_secs=30,
            purge_step=resumed_at + 1 if resumed else None,
            filename_suffix=f".resumed_at_{resumed_at}" if resumed else "")

  def write(self, step: int, record: dict[str, Any]) -> None:
    """One log line; usable as `Training.callback`."""
    if self._jsonl is None:
      return
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self.tb is None:
      return
    for k, v in record.items():
      if k not in _NOT_SCALARS and isinstance(v, (int, float)):
        self.tb.add_scalar(tag(k), v, step)

  def figures(self, step: int, workdir: str) -> None:
    """Each of `FIGURES` found in `workdir` (as `<name>.png`), as an image."""
    if self.tb is None:
      return
    for name in FIGURES:
      path = os.path.join(workdir, f"{name}.png")
      if os.path.exists(path):
        img = matplotlib.image.imread(path)[..., :3]     # RGB in [0, 1]
        self.tb.add_image(name, img, step, dataformats="HWC")

  def histograms(self, step: int, attributions: np.ndarray,
                 mask: np.ndarray, name: str = "attributions") -> None:
    """Per component c: the histogram of its attributions `[B, C]` (SPD:
    causal importances, `name`) over a batch; and of the mask's use:
    component ids, each counted once per example whose mask keeps it."""
    if self.tb is None:
      return
    attributions, mask = np.asarray(attributions), np.asarray(mask)
    for c in range(attributions.shape[1]):
      self.tb.add_histogram(f"{name}/component_{c:03d}",
                            attributions[:, c], step)
    ids = np.repeat(np.arange(mask.shape[1]), (mask > 0).sum(axis=0))
    if ids.size:
      self.tb.add_histogram("mask_use_by_component", ids, step)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self.tb is not None:
      self.tb.close()
      self.tb = None

  def __enter__(self) -> RunLog:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
