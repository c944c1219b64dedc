"""A command-line run started again: after a damaged checkpoint, to more
steps, once finished, and afresh."""

import json
import os
import shutil

import numpy as np
import pytest

from apd_jax.cli import config as cli_config
from apd_jax.cli import experiment
from apd_jax.cli import sweep_experiment
from apd_jax.cli import workdir as workdirs
from apd_jax.engine import api
from configs import tms_5_2


def tiny(steps=20, **options):
  """TMS 5-2 on a tiny budget: 10 steps per log and checkpoint, a constant
  rate without warm-up, no figures (unless `options` say otherwise)."""
  c = tms_5_2.get_config()
  c.update(steps=steps, log_every=10, checkpoint_every=10, eval_batches=1,
           batch_size=256, lr_schedule="constant", warmup_frac=0.0,
           figures=False)
  c.update(options)
  c.target.steps = 50
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """The workdir of a finished 20-step run (copy it to change it)."""
  workdir = tmp_path_factory.mktemp("finished")
  experiment.train_and_evaluate(tiny(), str(workdir))
  return workdir


def copy(finished, tmp_path):
  shutil.copytree(finished, tmp_path / "w")
  return tmp_path / "w"


def damage(step_dir, junk=True):
  """Every file of a checkpoint overwritten with junk (or truncated)."""
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(os.urandom(64) if junk else b"")


def logged_steps(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["step"] for line in lines]


def summary(workdir):
  return json.loads((workdir / "summary.json").read_text())


def test_a_damaged_checkpoint_falls_back_to_the_newest_intact_one(
    finished, tmp_path):
  """Step 20 overwritten: the rerun resumes from step 10 (the log cut back
  to it), saves step 20 again and ends as the first run; with every
  checkpoint damaged it refuses in one line and leaves the workdir be."""
  workdir = copy(finished, tmp_path)
  damage(workdir / "checkpoints" / "20")
  experiment.train_and_evaluate(tiny(), str(workdir))
  assert logged_steps(workdir) == [10, 20]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
  first, again = summary(finished), summary(workdir)
  for key in ("faithfulness", "topk_recon", "l0", "mmcs", "ml2r"):
    np.testing.assert_allclose(again[key], first[key], rtol=1e-5,
                               err_msg=key)

  damage(workdir / "checkpoints" / "10", junk=False)
  damage(workdir / "checkpoints" / "20")
  config = (workdir / "config.json").read_text()
  with pytest.raises(ValueError, match=r"no checkpoint in .* can be read "
                     r"\(step 10: .*; step 20: .*\); delete") as e:
    experiment.train_and_evaluate(tiny(), str(workdir))
  assert "\n" not in str(e.value)
  assert logged_steps(workdir) == [10, 20]
  assert (workdir / "config.json").read_text() == config


def test_a_finished_run_goes_on_to_more_steps(finished, tmp_path):
  """A constant rate without warm-up: the 20-step run, started again with
  steps=40, ends as a run of 40 steps from the start (on its target)."""
  workdir = copy(finished, tmp_path)
  experiment.train_and_evaluate(tiny(steps=40), str(workdir))
  assert logged_steps(workdir) == [10, 20, 30, 40]
  assert summary(workdir)["steps"] == 40
  c = tiny(steps=40)
  c.target.path = str(finished / "target_params.msgpack")
  apply_fn, params, sample_fn, _ = experiment.make_target(
      c.target, c.seed, str(tmp_path))
  method, training = cli_config.method_and_training(c, progress=False)
  want = api.decompose(apply_fn, params, sample_fn, include=c.include,
                       method=method, training=training).components
  got = np.load(workdir / "components.npz")
  for name, u in want.U.items():
    np.testing.assert_allclose(got[f"U{name}"], u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[f"V{name}"], want.V[name], rtol=1e-5,
                               atol=1e-6)


def saved_run(workdir, **options):
  """`workdir` holding the config of a run (as written by one)."""
  os.makedirs(workdir, exist_ok=True)
  (workdir / "config.json").write_text(
      tiny(**options).to_json_best_effort())


def test_steps_that_change_the_steps_taken_are_refused(tmp_path):
  """A warm-up of a fraction of the steps (with the warmup_frac that
  keeps it), a cosine schedule and fewer steps than taken are refused in
  one line that says why and how to go on."""
  saved_run(tmp_path, steps=20, warmup_frac=0.1)    # a 2-step warm-up
  with pytest.raises(ValueError) as e:
    workdirs.check_resume(str(tmp_path), tiny(40, warmup_frac=0.1), 20)
  message = str(e.value)
  assert "\n" not in message
  assert ("warm-up, warmup_frac=0.1 of the steps, would change from 2 to 4 "
          "steps; pass --config.warmup_frac=0.06 to keep it at 2 steps; "
          "keep --config.steps=20, or pass --fresh") in message
  workdirs.check_resume(str(tmp_path), tiny(40, warmup_frac=0.06), 20)

  saved_run(tmp_path, steps=20, lr_schedule="cosine", warmup_frac=0.0)
  with pytest.raises(ValueError, match="lr_schedule='cosine' spreads over "
                     "all the steps.*--fresh"):
    workdirs.check_resume(
        str(tmp_path), tiny(40, lr_schedule="cosine", warmup_frac=0.0), 20)

  saved_run(tmp_path, steps=20, warmup_frac=0.0)
  with pytest.raises(ValueError, match="step 20 is past the last step"):
    workdirs.check_resume(str(tmp_path), tiny(10, warmup_frac=0.0), 20)
  workdirs.check_resume(str(tmp_path), tiny(30, warmup_frac=0.0), 10)
  with pytest.raises(ValueError, match="other settings .*steps: 20 -> 30"):
    workdirs.check_resume(str(tmp_path), tiny(30, lr=0.01), 20)


def test_an_option_added_since_the_run_counts_at_its_default(tmp_path):
  """A run saved before an option existed ran at its default: resuming it
  with the default goes on; with another value it is refused."""
  os.makedirs(tmp_path, exist_ok=True)
  old = json.loads(tiny().to_json_best_effort())
  del old["compute_dtype"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  workdirs.check_resume(str(tmp_path), tiny(), 10)
  with pytest.raises(ValueError, match="compute_dtype: None -> 'bfloat16'"):
    workdirs.check_resume(str(tmp_path), tiny(compute_dtype="bfloat16"), 10)


def test_figures_devices_and_checkpoints_may_change_the_settings_not(
    tmp_path):
  """`same_settings` (a finished scoreboard entry is read back): a run
  saved before `figures` existed, read with figures off, more often
  checkpointed and on another mesh, has the same settings; with more steps
  it has not."""
  old = json.loads(tiny(figures=True).to_json_best_effort())
  del old["figures"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  other = tiny(checkpoint_every=5)
  other.mesh.data = 1
  assert workdirs.same_settings(str(tmp_path), other)
  workdirs.check_resume(str(tmp_path), other, 10)
  assert not workdirs.same_settings(str(tmp_path), tiny(steps=40))
  assert not workdirs.same_settings(str(tmp_path / "none"), tiny())


def test_a_finished_run_started_again_keeps_its_timings_and_events(
    finished, tmp_path):
  """The same command again: the summary keeps the run's timings (and its
  metrics), and no second TensorBoard event file appears."""
  workdir = copy(finished, tmp_path)
  first = summary(workdir)
  events = sorted(workdir.glob("events.out.tfevents.*"))
  sizes = [p.stat().st_size for p in events]
  experiment.train_and_evaluate(tiny(), str(workdir))
  again = summary(workdir)
  assert len(events) == 1
  assert sorted(workdir.glob("events.out.tfevents.*")) == events
  assert [p.stat().st_size for p in events] == sizes
  for key in ("wall_seconds", "steps_per_s", "faithfulness", "mmcs"):
    assert again[key] == first[key], key
  assert again["total_seconds"] >= again["wall_seconds"]


def test_a_finished_sweep_started_again_keeps_its_timings(tmp_path):
  c = tiny()
  c.sweep.seed = (1,)
  first = sweep_experiment.train_and_evaluate(c, str(tmp_path))
  run = tmp_path / "runs" / "run_000"
  events = sorted(run.glob("events.out.tfevents.*"))
  again = sweep_experiment.train_and_evaluate(c, str(tmp_path))
  for key in ("train_seconds", "run_steps_per_s"):
    assert again[key] == first[key], key
  assert sorted(run.glob("events.out.tfevents.*")) == events
  assert summary(run)["wall_seconds"] == first["train_seconds"]


def test_timings_span_every_session():
  """Two sessions (the second resumed at step 20): the seconds add up and
  the rate leaves out each session's first log, which compiles."""
  history = [dict(step=10, steps_per_s=5.0, elapsed_s=2.0),
             dict(step=20, steps_per_s=100.0, elapsed_s=2.1),
             dict(step=30, steps_per_s=4.0, elapsed_s=2.5),
             dict(step=40, steps_per_s=50.0, elapsed_s=2.7)]
  seconds, rate = workdirs.timings(history)
  assert np.isclose(seconds, 2.0 + 0.1 + 2.5 + 0.2)
  assert rate == 75.0
  assert np.isclose(workdirs.timings(history, 20)[0], 2.1)


def test_fresh_deletes_what_the_old_run_wrote(tmp_path):
  """`--fresh` deletes the old run's outputs, its TensorBoard events
  included; its target and files of others stay."""
  old = ["config.json", "metrics.jsonl", "events.out.tfevents.1.host",
         "summary.json", "summary.md", "summary.png", "losses.png",
         "components.npz", "components.png", "attributions.png",
         "sweep.csv", "sweep_topk.png", "checkpoints/10/state",
         "decomposition/decomposition.json", "runs/run_000/summary.json",
         "best/summary.json"]
  kept = ["target_params.msgpack", "targets/seed_0/target_params.msgpack",
          "notes.txt"]
  for name in old + kept:
    os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
    (tmp_path / name).write_text("x")
  workdirs.start_afresh(str(tmp_path))
  left = sorted(os.path.relpath(os.path.join(root, f), tmp_path)
                for root, _, files in os.walk(tmp_path) for f in files)
  assert left == sorted(kept)
