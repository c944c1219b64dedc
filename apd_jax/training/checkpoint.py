"""Training checkpoints: periodic, atomic, the last N kept, sharded restore.

A checkpoint is the `TrainState` (step, factors, optimizer state) and the
history logged so far, written by every process through an orbax
`CheckpointManager` (each writes its own shards; orbax commits a step
atomically, so a run killed mid-write leaves the previous step intact). The
data of step s is drawn from `fold_in(data_key, s)`, so a run restored from
step s and run on ends exactly where an uninterrupted run would.

A checkpoint whose files were damaged after it was committed (truncated,
overwritten) is skipped: `latest_step` and `Checkpoints.restore` both take
the newest checkpoint whose history parses and whose every array reads
back, and `restore` deletes the damaged newer ones (with a warning) so that
the run can save those steps again.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
import tensorstore as ts
from absl import logging


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
    """`(state, history)` of `step` (default: the newest that can be read;
    newer ones that cannot are deleted, with a one-line warning).

    Args:
      state: a state (or abstract state) giving the structure and dtypes.
      shardings: where the restored arrays go (default: `state`'s own).
      step: which checkpoint.

    Raises:
      FileNotFoundError: there is no checkpoint.
      ValueError: no checkpoint can be read.
    """
    if step is None:
      step, bad = newest_intact(self.directory, self.manager.all_steps())
      if step is None and bad:
        raise ValueError(none_intact(self.directory, bad))
      if bad:
        logging.warning("unreadable checkpoints in %s (%s): deleted, "
                        "restoring step %d", self.directory,
                        unreadable(bad), step)
        for s in bad:
          self.manager.delete(s)
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
  """The step `Checkpoints.restore` restores from `directory`: its newest
  checkpoint that can be read (None: no checkpoint).

  Raises:
    ValueError: there are checkpoints but none can be read.
  """
  if not os.path.isdir(directory):
    return None
  step, bad = newest_intact(directory, ocp.utils.checkpoint_steps(directory))
  if step is None and bad:
    raise ValueError(none_intact(directory, bad))
  return step


def newest_intact(directory: str, steps) -> tuple[int | None, dict]:
  """The newest of `steps` whose checkpoint can be read (None: none), and
  `{step: why}` for each newer one that cannot."""
  bad = {}
  for step in sorted(steps, reverse=True):
    why = problem(directory, step)
    if why is None:
      return step, bad
    bad[step] = why
  return None, bad


def problem(directory: str, step: int) -> str | None:
  """Why the checkpoint of `step` cannot be read, in one line (None: it
  can): its history must parse and every array of its state read back."""
  path = os.path.join(os.path.abspath(directory), str(step))
  try:
    with open(os.path.join(path, "history", "metadata")) as f:
      json.load(f)
    if not _read_arrays(os.path.join(path, "state")):
      return "its state holds no arrays"
  except Exception as e:  # noqa: BLE001 - any failure: it cannot be read
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:160]}"
  return None


def _read_arrays(state_dir: str) -> int:
  """Reads every array that orbax wrote to `state_dir` (zarr arrays, in an
  OCDBT database or as files), one at a time; returns how many."""
  ocdbt = os.path.exists(os.path.join(state_dir, "manifest.ocdbt"))

  def store(path: str = "") -> dict:
    files = {"driver": "file", "path": f"{state_dir}/"}
    if ocdbt:
      return {"driver": "ocdbt", "base": files, "path": path}
    return dict(files, path=f"{state_dir}/{path}")

  n = 0
  for key in ts.KvStore.open(store()).result().list().result():
    name, _, leaf = key.decode().rpartition("/")
    driver = {".zarray": "zarr", "zarr.json": "zarr3"}.get(leaf)
    if driver:
      spec = {"driver": driver, "kvstore": store(f"{name}/")}
      ts.open(spec, open=True).result().read().result()
      n += 1
  return n


def unreadable(bad: dict) -> str:
  """`{step: why}` in one line: `step 30: ...; step 40: ...`."""
  return "; ".join(f"step {s}: {why}" for s, why in sorted(bad.items()))


def none_intact(directory: str, bad: dict) -> str:
  return (f"no checkpoint in {directory} can be read ({unreadable(bad)}); "
          f"delete {directory} to start again")
