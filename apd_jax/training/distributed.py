"""Several processes, one run: start-up, process-0 writing, preemption.

`initialize` joins this process to the others through JAX's distributed
runtime (`jax.distributed.initialize`); afterwards `jax.devices()` lists the
devices of every process and one `jax.jit` program spans them all. Only
process 0 writes logs and figures (`is_main`); all processes take part in
checkpoints.

A preemption notice is SIGTERM. With one process, `PreemptionWatch` catches
it and the loop saves a checkpoint at its next chunk boundary; with several,
JAX's preemption service catches it and agrees with the others on the chunk
at which all of them save (`multihost_utils.reached_preemption_sync_point`).
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preempted(Exception):  # noqa: N818 - the event, not an error
  """The run was asked to stop and has saved a checkpoint."""


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the processes of one run.

  With no arguments the cluster is detected (TPU pod slices, SLURM, ...);
  otherwise all three must be given.

  Args:
    coordinator_address: `host:port` of process 0.
    num_processes: the number of processes.
    process_id: this process's index in `[0, num_processes)`.
  """
  given = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in given):
    if any(v is None for v in given):
      raise ValueError("give all of coordinator_address, num_processes and "
                       "process_id, or none of them to auto-detect")
    jax.distributed.initialize(coordinator_address, num_processes,
                               process_id)
  else:
    jax.distributed.initialize()
  logging.info("process %d of %d: %d local devices of %d",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def is_main() -> bool:
  """Whether this is process 0, the one that writes logs and figures."""
  return jax.process_index() == 0


class PreemptionWatch:
  """Within `with`, tells whether the run should checkpoint and stop.

  `requested(i)` must be called by every process with the same `i` at the
  same point of the loop (the chunk counter).
  """

  def __init__(self, enabled: bool = True):
    self.enabled = enabled
    self.flag = False
    self._previous = None

  def __enter__(self):
    if (self.enabled and jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: checkpointing at the next chunk",
                    signum)
    self.flag = True

  def requested(self, sync_id: int) -> bool:
    if not self.enabled:
      return False
    if jax.process_count() > 1:
      try:
        return multihost_utils.reached_preemption_sync_point(sync_id)
      except RuntimeError:  # preemption service disabled
        return False
    return self.flag
