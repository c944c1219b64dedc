"""Training checkpoints: periodic, atomic, the last N kept, sharded restore.

A checkpoint is the `TrainState` (step, factors, optimizer state) and the
history logged so far, written by every process through an orbax
`CheckpointManager` (each writes its own shards; orbax commits a step
atomically, so a run killed mid-write leaves the previous step intact). The
data of step s is drawn from `fold_in(data_key, s)`, so a run restored from
step s and run on ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """The checkpoints of one run in `directory`.

  Attributes:
    directory: absolute path of the checkpoint directory.
    every: save every this many steps (0: only at the end and on
      preemption).
  """

  def __init__(self, directory: str, *, every: int = 0, keep: int = 3):
    if every < 0 or keep < 1:
      raise ValueError(f"checkpoint_every must be >= 0 and keep_checkpoints "
                       f">= 1, got {every} and {keep}")
    self.directory = os.path.abspath(directory)
    self.every = every
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def due(self, step: int) -> bool:
    """Whether `step` is a periodic checkpoint step."""
    return self.every > 0 and step % self.every == 0

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, history: list[dict]) -> None:
    """Starts saving (asynchronously) `state` and `history` as `step`."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        history=ocp.args.JsonSave({"history": history})), force=True)

  def restore(self, state: Any, shardings: Any = None,
              step: int | None = None) -> tuple[Any, list[dict]]:
    """`(state, history)` of `step` (default: the latest).

    Args:
      state: a state (or abstract state) giving the structure and dtypes.
      shardings: where the restored arrays go (default: `state`'s own).
      step: which checkpoint.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    if shardings is None:
      shardings = jax.tree.map(lambda a: a.sharding, state)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        state, shardings)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        history=ocp.args.JsonRestore()))
    return out.state, list(out.history["history"])

  def wait(self) -> None:
    """Blocks until every started save is committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def latest_step(directory: str) -> int | None:
  """The latest committed checkpoint step in `directory` (None: none)."""
  if not os.path.isdir(directory):
    return None
  steps = ocp.utils.checkpoint_steps(directory)
  return max(steps) if steps else None
