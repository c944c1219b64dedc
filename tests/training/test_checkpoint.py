"""Checkpoints: kept last N, resumed after SIGKILL and SIGTERM, NaN stops."""

import logging
import os
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scale_worker
from conftest import apd_and_plan

from apd_jax.engine import api
from apd_jax.targets import tms
from apd_jax.training import checkpoint
from apd_jax.training import distributed
from apd_jax.training import train
from apd_jax.training.options import Training


def tiny_fit_setup():
  params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
  target = api.make_target(tms.apply, params, "W")
  method, plan = apd_and_plan(n_components=5, topk=1.0, rank=2)
  training = Training(steps=50, batch_size=32, lr=1e-2)
  step = api.make_train_step(method, plan, target, tms.sampler(
      n_features=5, feature_probability=0.2), training)
  return api.init_state(method, target, training, seed=1), step


def test_saves_every_n_steps_and_keeps_the_last_two(tmp_path):
  state, step = tiny_fit_setup()
  ckpts = checkpoint.Checkpoints(str(tmp_path), every=20, keep=2)
  final, history = train.fit(state, step, jax.random.PRNGKey(2), steps=50,
                             log_every=10, checkpoints=ckpts)
  assert sorted(ckpts.manager.all_steps()) == [40, 50]  # 20 deleted
  assert checkpoint.latest_step(str(tmp_path)) == 50
  template, _ = tiny_fit_setup()
  restored, saved = ckpts.restore(template)
  assert int(restored.step) == 50
  assert saved == history and [r["step"] for r in saved] == [10, 20, 30,
                                                             40, 50]
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(final),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  earlier, _ = ckpts.restore(template, step=40)
  assert int(earlier.step) == 40
  ckpts.close()


def damage(step_dir, junk=True):
  """Every file of a checkpoint overwritten with junk (or truncated)."""
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(os.urandom(64) if junk else b"")


def test_damaged_checkpoints_fall_back_to_the_newest_intact_one(tmp_path,
                                                                caplog):
  """Steps 40 (junk) and 50 (truncated) damaged: both the latest step and
  restore take step 30, with one warning naming both, which are deleted;
  the run goes on from there and ends as before."""
  state, step = tiny_fit_setup()
  ckpts = checkpoint.Checkpoints(str(tmp_path), every=10, keep=5)
  final, history = train.fit(state, step, jax.random.PRNGKey(2), steps=50,
                             log_every=10, checkpoints=ckpts)
  ckpts.close()
  damage(tmp_path / "40")
  damage(tmp_path / "50", junk=False)
  assert checkpoint.latest_step(str(tmp_path)) == 30
  ckpts = checkpoint.Checkpoints(str(tmp_path), every=10, keep=5)
  template, _ = tiny_fit_setup()
  with caplog.at_level(logging.WARNING):
    restored, saved = ckpts.restore(template)
  assert int(restored.step) == 30 and saved == history[:3]
  (warning,) = [r.getMessage() for r in caplog.records
                if "unreadable checkpoints" in r.getMessage()]
  assert "\n" not in warning
  assert re.fullmatch(r"unreadable checkpoints in \S+ \(step 40: \w+: .+; "
                      r"step 50: \w+: .+\): deleted, restoring step 30",
                      warning)
  assert sorted(ckpts.manager.all_steps()) == [10, 20, 30]
  again, history = train.fit(restored, step, jax.random.PRNGKey(2),
                             steps=50, log_every=10, checkpoints=ckpts,
                             history=saved)
  assert [r["step"] for r in history] == [10, 20, 30, 40, 50]
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(final),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  assert checkpoint.latest_step(str(tmp_path)) == 50
  ckpts.close()


def test_no_intact_checkpoint_is_one_clear_error(tmp_path):
  state, step = tiny_fit_setup()
  ckpts = checkpoint.Checkpoints(str(tmp_path), every=10)
  train.fit(state, step, jax.random.PRNGKey(2), steps=20, log_every=10,
            checkpoints=ckpts)
  damage(tmp_path / "10")
  damage(tmp_path / "20", junk=False)
  message = (r"no checkpoint in \S+ can be read \(step 10: \w+: .+; "
             r"step 20: \w+: .+\); delete \S+ to start again$")
  with pytest.raises(ValueError, match=message) as e:
    checkpoint.latest_step(str(tmp_path))
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match=message):
    ckpts.restore(tiny_fit_setup()[0])
  assert sorted(ckpts.manager.all_steps()) == [10, 20]   # nothing deleted
  ckpts.close()


def test_a_sweep_resumes_from_the_newest_intact_one(tmp_path):
  """A sweep (`decompose`: tests/cli/test_restart.py) on a directory whose
  newest checkpoint is damaged resumes from the one before and ends as
  uninterrupted."""
  d = str(tmp_path / "ckpt")
  scale_worker.run(checkpoint_dir=d, checkpoint_every=10, sweep=True)
  damage(os.path.join(d, str(scale_worker.STEPS)))
  resumed = scale_worker.run(checkpoint_dir=d, checkpoint_every=10,
                             sweep=True)
  scale_worker.assert_same_run(resumed, scale_worker.reference(sweep=True))
  assert checkpoint.latest_step(d) == scale_worker.STEPS


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  state, step = tiny_fit_setup()

  def breaks_at_25(s, key):  # the loss becomes NaN from step 26 on
    new, metrics = step(s, key)
    nan = jnp.where(s.step >= 25, jnp.nan, 0.0)
    return new, dict(metrics, loss=metrics["loss"] + nan)

  ckpts = checkpoint.Checkpoints(str(tmp_path), every=10)
  message = (r"non-finite loss in steps 21\.\.30: faithfulness=0\.\d+, "
             r"l0=1, loss=nan, minimality=0\.\d+, simplicity=0\.\d+; the "
             r"last good checkpoint \(step 20\) is kept in " + str(tmp_path))
  with pytest.raises(FloatingPointError, match=message):
    train.fit(state, breaks_at_25, jax.random.PRNGKey(2), steps=50,
              log_every=10, checkpoints=ckpts)
  assert sorted(ckpts.manager.all_steps()) == [10, 20]
  template, _ = tiny_fit_setup()
  restored, history = ckpts.restore(template)
  assert int(restored.step) == 20 and len(history) == 2
  ckpts.close()


def test_sigterm_checkpoints_then_the_rerun_ends_as_uninterrupted(tmp_path):
  """SIGTERM at step 20 of 40 (no periodic checkpoints): the run saves step
  20 and raises Preempted; run again, it resumes and matches the run that
  was never stopped."""
  d = str(tmp_path / "ckpt")

  def term_at_20(step, record):
    del record
    if step == 20:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(distributed.Preempted, match="checkpoint at step 20"):
    scale_worker.run(checkpoint_dir=d, callback=term_at_20)
  assert checkpoint.latest_step(d) == 20
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  resumed = scale_worker.run(checkpoint_dir=d)
  scale_worker.assert_same_run(resumed, scale_worker.reference())
  assert checkpoint.latest_step(d) == scale_worker.STEPS


def test_rerun_after_sigkill_ends_as_uninterrupted(tmp_path):
  """A process killed by SIGKILL at step 30 (checkpoints every 10), started
  again on the same directory, ends with the uninterrupted run's metrics."""
  d = str(tmp_path / "ckpt")
  run = scale_worker.launch(tmp_path / "out", f"--checkpoint_dir={d}",
                            "--checkpoint_every=10", "--signal_at=30:SIGKILL")
  assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
  assert not (tmp_path / "out.1x1.npz").exists()
  assert checkpoint.latest_step(d) in (10, 20, 30)
  resumed = scale_worker.run(checkpoint_dir=d, checkpoint_every=10)
  scale_worker.assert_same_run(resumed, scale_worker.reference())


def test_sweep_rerun_after_sigkill_ends_as_uninterrupted(tmp_path):
  """The same for a sweep of four runs in one program: killed at step 30,
  started again, every run ends as in the uninterrupted sweep."""
  d = str(tmp_path / "ckpt")
  run = scale_worker.launch(tmp_path / "out", f"--checkpoint_dir={d}",
                            "--checkpoint_every=10", "--signal_at=30:SIGKILL",
                            "--sweep")
  assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
  assert checkpoint.latest_step(d) in (10, 20, 30)
  resumed = scale_worker.run(checkpoint_dir=d, checkpoint_every=10,
                             sweep=True)
  want = scale_worker.reference(sweep=True)
  assert resumed["U"].shape == (4, 8, 2, 3)
  scale_worker.assert_same_run(resumed, want)
