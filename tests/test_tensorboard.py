"""Event files: exact CRC and protobuf bytes, and a full read-back."""

import io
import struct

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from apd_jax import tensorboard as tb  # noqa: E402


def test_crc32c_check_values():
  assert tb.crc32c(b"123456789") == 0xE3069283     # the standard check value
  assert tb.crc32c(b"") == 0
  # RFC 3720 (iSCSI) B.4 test vectors.
  assert tb.crc32c(bytes(32)) == 0x8A9136AA
  assert tb.crc32c(b"\xff" * 32) == 0x62A8AB43
  assert tb.crc32c(bytes(range(32))) == 0x46DD794E


def test_masked_crc_rotates_and_offsets():
  crc = 0xE3069283
  rot = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
  assert tb.masked_crc32c(b"123456789") == (rot + 0xA282EAD8) & 0xFFFFFFFF


def test_scalar_event_bytes():
  summary = b"\x0a" + bytes([len(tb.scalar_value("a", 0.5))]) \
      + tb.scalar_value("a", 0.5)
  got = tb.event(1.0, step=300, summary=summary)
  want = (b"\x09" + struct.pack("<d", 1.0)          # wall_time, fixed64
          + b"\x10\xac\x02"                         # step = 300, varint
          + b"\x2a\x0a"                             # summary, 10 bytes
          + b"\x0a\x08"                             # value, 8 bytes
          + b"\x0a\x01a"                            # tag "a"
          + b"\x15\x00\x00\x00\x3f")                # simple_value 0.5f
  assert got == want


def test_record_framing():
  rec = tb.record(b"abc")
  assert rec[:8] == struct.pack("<Q", 3)
  assert rec[8:12] == struct.pack("<I", tb.masked_crc32c(rec[:8]))
  assert rec[12:15] == b"abc"
  assert rec[15:] == struct.pack("<I", tb.masked_crc32c(b"abc"))


def _fields(data):
  """Decodes one protobuf message into `[(field, value)]`."""
  out, i = [], 0
  while i < len(data):
    key, i = _varint(data, i)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, i = _varint(data, i)
    elif wire == 1:
      value, i = struct.unpack("<d", data[i:i + 8])[0], i + 8
    elif wire == 5:
      value, i = struct.unpack("<f", data[i:i + 4])[0], i + 4
    else:
      n, i = _varint(data, i)
      value, i = data[i:i + n], i + n
    out.append((field, value))
  return out


def _varint(data, i):
  n = shift = 0
  while True:
    b = data[i]
    n |= (b & 0x7F) << shift
    i, shift = i + 1, shift + 7
    if not b & 0x80:
      return n, i


def read_events(path):
  """Every event of a file as a dict, checking both CRCs of each record."""
  data, i, events = open(path, "rb").read(), 0, []
  while i < len(data):
    head = data[i:i + 8]
    (n,) = struct.unpack("<Q", head)
    assert struct.unpack("<I", data[i + 8:i + 12])[0] == tb.masked_crc32c(head)
    body = data[i + 12:i + 12 + n]
    assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == \
        tb.masked_crc32c(body)
    events.append(dict(_fields(body)))
    i += 16 + n
  return events


def test_writer_round_trip(tmp_path):
  fig, ax = plt.subplots(figsize=(2, 1.5))
  ax.plot([0, 1])
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=50)
  plt.close(fig)
  with tb.Writer(str(tmp_path)) as w:
    w.scalars(10, {"loss": 0.25, "l0": 1.5})
    w.image(20, "components", png.getvalue())
  assert "tfevents" in w.path
  events = read_events(w.path)
  assert events[0][3] == b"brain.Event:2"
  assert events[1][2] == 10
  values = [dict(_fields(v)) for f, v in _fields(events[1][5])]
  assert [(v[1], v[2]) for v in values] == [(b"loss", 0.25), (b"l0", 1.5)]
  assert events[2][2] == 20
  (value,) = [dict(_fields(v)) for f, v in _fields(events[2][5])]
  image = dict(_fields(value[4]))
  assert value[1] == b"components"
  assert (image[1], image[2], image[3]) == (75, 100, 4)   # 1.5 x 2 in at 50
  assert image[4] == png.getvalue()


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with tb.Writer(str(tmp_path / "tb")) as w:
    w.scalars(1, {"loss": 1.0})
  assert w.path is None and not (tmp_path / "tb").exists()


def test_png_size_rejects_other_data():
  with pytest.raises(ValueError, match="not a PNG"):
    tb.png_size(b"GIF89a" + bytes(30))
