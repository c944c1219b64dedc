"""Two processes joined by `jax.distributed` on 127.0.0.1 give one's run."""

import subprocess

import pytest
import scale_worker

from apd_jax.training import distributed


def test_two_processes_give_the_one_process_run(tmp_path):
  """Two processes with 2 CPU devices each form a 2×2 mesh (both axes span
  the processes); process 0's result is the 1-device run of this process.
  A peer that never arrives makes jax.distributed abort, so each process
  runs under a timeout."""
  port = scale_worker.free_port()
  procs = [subprocess.Popen(
      scale_worker.command(
          tmp_path / "out", "--devices=2", "--meshes=2x2",
          f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
          f"--process_id={i}"),
      cwd=scale_worker.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  try:
    logs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  out = scale_worker.load(tmp_path / "out.2x2.npz")
  assert (out["processes"], out["devices"]) == (2, 4)
  scale_worker.assert_same_run(out, scale_worker.reference())


def test_initialize_needs_all_three_settings_or_none():
  with pytest.raises(ValueError, match="give all of coordinator_address"):
    distributed.initialize("127.0.0.1:1234", num_processes=2)
