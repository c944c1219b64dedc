"""What a decomposition leaves in its workdir, written by process 0 only.

  metrics.jsonl          one line per log: step, losses, L0, steps/s
  events.out.tfevents.*  TensorBoard: the same scalars, the component figure
  components.npz         the factors U, V of every decomposed leaf
  summary.json           final metrics (MMCS, ML2R for TMS, faithfulness, ...)
  components.png         target weights beside each component
  losses.png             the loss terms over training
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import jax
import numpy as np

from apd_jax import api
from apd_jax import metrics as metrics_lib
from apd_jax import plotting
from apd_jax import tensorboard

# Record fields that are not curves worth a TensorBoard plot.
_NOT_SCALARS = ("step", "elapsed_s")


def is_writer() -> bool:
  """Whether this process writes files (only process 0 does)."""
  return jax.process_index() == 0


class RunLog:
  """`metrics.jsonl` and TensorBoard scalars for one run in `workdir`."""

  def __init__(self, workdir: str):
    self.tb = tensorboard.Writer(workdir)
    self._jsonl = None
    if is_writer():
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "w")  # noqa: SIM115

  def write(self, step: int, record: dict[str, Any]) -> None:
    """One log line; usable as `decompose`'s callback."""
    if self._jsonl is not None:
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
    self.tb.scalars(step, {k: v for k, v in record.items()
                           if k not in _NOT_SCALARS
                           and isinstance(v, (int, float))})

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    self.tb.close()

  def __enter__(self) -> RunLog:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def feature_metrics(params: Any, result: api.Decomposition) -> dict:
  """MMCS and ML2R of a TMS target's `W` (the paper's feature recovery)."""
  W = params["W"]
  P = result.component_weights["['W']"]
  return dict(mmcs=float(metrics_lib.mmcs(W, P)),
              ml2r=float(metrics_lib.ml2r(W, P)))


def write_decomposition(workdir: str, result: api.Decomposition,
                        summary: dict[str, Any], *, title: str = "",
                        log: RunLog | None = None) -> None:
  """Writes the factors, `summary`, the figures and (to `log`'s TensorBoard
  file) the component figure of the first decomposed leaf."""
  if not is_writer():
    return
  os.makedirs(workdir, exist_ok=True)
  comps = result.components
  np.savez(os.path.join(workdir, "components.npz"),
           **{f"U{n}": np.asarray(u) for n, u in comps.U.items()},
           **{f"V{n}": np.asarray(v) for n, v in comps.V.items()})
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  name = result.target.names[0]
  target, P = result.target.weights[name], result.component_weights[name]
  png = io.BytesIO()
  plotting.plot_columns(target, P, png, title=title)
  with open(os.path.join(workdir, "components.png"), "wb") as f:
    f.write(png.getvalue())
  if log is not None:
    log.tb.image(int(summary.get("steps", 0)), "components", png.getvalue())
  plotting.plot_history(result.history, os.path.join(workdir, "losses.png"))
