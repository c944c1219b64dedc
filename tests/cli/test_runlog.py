"""A run's logs: metrics.jsonl and TensorBoard events (read back with the
event protobuf that tensorboardX ships)."""

import json
import struct

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402

from apd_jax.cli import runlog  # noqa: E402


def read_events(directory):
  """Every Event in the event files of `directory` (TFRecord framing:
  u64 length, u32 crc, data, u32 crc)."""
  events = []
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + n])
      events.append(event)
      i += 12 + n + 4
  return events


def test_scalars_images_and_histograms_round_trip(tmp_path):
  fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
  ax.plot([0, 1])
  fig.savefig(tmp_path / "losses.png")
  plt.close(fig)
  with runlog.RunLog(str(tmp_path)) as log:
    log.write(100, dict(step=100, loss=0.5, l0=1.25, elapsed_s=3.0))
    log.write(200, dict(step=200, loss=0.25, l0=1.0, elapsed_s=6.0))
    log.figures(200, str(tmp_path))
    attr = np.array([[1.0, 0.0], [2.0, 0.5], [3.0, 0.0]])
    mask = np.array([[1, 0], [1, 1], [1, 0]])
    log.histograms(200, attr, mask)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["loss"] for x in lines] == [0.5, 0.25]
  values = [(e.step, v) for e in read_events(tmp_path) for v in
            e.summary.value]
  scalars = {(s, v.tag): v.simple_value for s, v in values
             if v.HasField("simple_value")}
  assert scalars == {(100, "loss"): 0.5, (100, "l0"): 1.25,
                     (200, "loss"): 0.25, (200, "l0"): 1.0}
  images = {v.tag: v.image for _, v in values if v.HasField("image")}
  assert set(images) == {"losses"}
  assert (images["losses"].width, images["losses"].height) == (100, 50)
  hists = {v.tag: v.histo for _, v in values if v.HasField("histo")}
  assert set(hists) == {"attributions/component_000",
                        "attributions/component_001",
                        "mask_use_by_component"}
  assert hists["attributions/component_000"].num == 3
  assert hists["attributions/component_000"].sum == 6.0
  use = hists["mask_use_by_component"]
  assert (use.num, use.sum) == (4, 1.0)    # ids 0, 0, 0, 1


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with runlog.RunLog(str(tmp_path / "run")) as log:
    log.write(1, dict(step=1, loss=1.0))
    log.histograms(1, np.ones((2, 2)), np.ones((2, 2)))
  assert not (tmp_path / "run").exists()


def test_a_resumed_run_hides_the_events_after_its_checkpoint(tmp_path):
  """A run killed at step 30 after its checkpoint at 20, resumed: the new
  event file starts TensorBoard's purge at step 21, so the old file's
  step-30 scalars do not show twice; a finished run started again writes
  no event file."""
  with runlog.RunLog(str(tmp_path)) as log:
    for step in (10, 20, 30):
      log.write(step, dict(step=step, loss=1.0 / step))
  (old,) = tmp_path.glob("events.out.tfevents.*")
  with runlog.RunLog(str(tmp_path), append=True, resumed_at=20) as log:
    log.write(30, dict(step=30, loss=0.5))
  (new,) = set(tmp_path.glob("events.out.tfevents.*")) - {old}
  starts = [e.step for e in read_events(tmp_path)
            if e.HasField("session_log")
            and e.session_log.status == e.session_log.START]
  assert starts == [21]
  losses = sorted(e.step for e in read_events(tmp_path)
                  for v in e.summary.value if v.tag == "loss")
  assert losses == [10, 20, 30, 30]      # the old file kept, beside the new
  assert runlog.event_files(str(tmp_path)) == sorted(map(str, (old, new)))
  with runlog.RunLog(str(tmp_path), append=True, resumed_at=30,
                     events=False) as log:
    log.write(30, dict(step=30, loss=0.5))
    log.figures(30, str(tmp_path))
  assert len(runlog.event_files(str(tmp_path))) == 2
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == [10, 20, 30, 30, 30]
