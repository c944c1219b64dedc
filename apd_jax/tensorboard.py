"""TensorBoard event files, written directly (no TensorFlow needed).

An event file is a sequence of TFRecords,

    u64 length | u32 masked_crc(length) | data | u32 masked_crc(data)

(little-endian), each `data` a serialized `tensorflow.Event` protobuf. The few
messages needed here are encoded by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
              Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; Image image = 4; }
    Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3;
              bytes encoded_image_string = 4; }

Only process 0 writes; on the others a `Writer` does nothing.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import jax


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord uses."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: `rotr15(crc) + 0xa282ead8` (mod 2³²)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
  """One TFRecord holding `data`."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # negative int64 as two's complement
  out = bytearray()
  while True:
    low, n = n & 0x7F, n >> 7
    out.append(low | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _key(field: int, wire: int) -> bytes:
  return _varint(field << 3 | wire)


def _int(field: int, n: int) -> bytes:
  return _key(field, 0) + _varint(n)


def _bytes(field: int, data: bytes) -> bytes:
  return _key(field, 2) + _varint(len(data)) + data


def event(wall_time: float, *, step: int | None = None,
          file_version: str | None = None,
          summary: bytes | None = None) -> bytes:
  """A serialized `Event`."""
  out = _key(1, 1) + struct.pack("<d", wall_time)
  if step is not None:
    out += _int(2, step)
  if file_version is not None:
    out += _bytes(3, file_version.encode())
  if summary is not None:
    out += _bytes(5, summary)
  return out


def scalar_value(tag: str, value: float) -> bytes:
  """A serialized `Summary.Value` with a `simple_value`."""
  return _bytes(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value)


def png_size(png: bytes) -> tuple[int, int]:
  """`(height, width)` from a PNG's IHDR chunk."""
  if png[:8] != b"\x89PNG\r\n\x1a\n":
    raise ValueError("not a PNG")
  width, height = struct.unpack(">II", png[16:24])
  return height, width


def image_value(tag: str, png: bytes) -> bytes:
  """A serialized `Summary.Value` holding a PNG image (RGBA: colorspace 4)."""
  height, width = png_size(png)
  image = (_int(1, height) + _int(2, width) + _int(3, 4)
           + _bytes(4, png))
  return _bytes(1, tag.encode()) + _bytes(4, image)


class Writer:
  """Appends scalars and images to one event file in `logdir`.

  Only `jax.process_index() == 0` writes; elsewhere every call is a no-op.
  """

  def __init__(self, logdir: str):
    self.path = None
    self._file = None
    if jax.process_index() != 0:
      return
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    self.path = os.path.join(
        logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}")
    self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
    self._write(event(now, file_version="brain.Event:2"))

  def _write(self, data: bytes) -> None:
    self._file.write(record(data))
    self._file.flush()

  def scalars(self, step: int, values: dict[str, float]) -> None:
    """One event at `step` with a scalar per tag."""
    if self._file is None:
      return
    summary = b"".join(_bytes(1, scalar_value(tag, float(v)))
                       for tag, v in values.items())
    self._write(event(time.time(), step=step, summary=summary))

  def image(self, step: int, tag: str, png: bytes) -> None:
    """One event at `step` with the PNG image `png`."""
    if self._file is None:
      return
    self._write(event(time.time(), step=step,
                      summary=_bytes(1, image_value(tag, png))))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self) -> Writer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
