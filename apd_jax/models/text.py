"""Real text every machine with Python has: the standard library's source.

    corpus = stdlib_corpus()                  # bytes as uint8 arrays
    sample_fn = sampler(corpus.train, 128)    # sample_fn(key, B) -> [B, 128]

The corpus is the text (code, comments and docstrings) of the `.py` files
of the running Python's standard library (`sysconfig`'s `stdlib` path,
without `site-packages`), read as bytes: the tokens are bytes, vocabulary
256. Files are split into training and held-out sets *by file*, by a hash
of each file's path relative to the library (`crc32 % 1000 <
1000 · heldout_frac`), so the split is the same on every machine with the
same Python version. Each set's files, in an order fixed by a seeded
permutation, are joined with a NUL byte between files, up to a byte budget.
Windows are drawn on device from a key, so a run's data is a function of
its seed.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sysconfig
import zlib

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
SEPARATOR = 0     # the byte between two files


def stdlib_dir() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: pathlib.Path | None = None) -> list[str]:
  """The standard library's `.py` files, as sorted paths relative to
  `root` (default the stdlib), `site-packages` excluded."""
  root = root or stdlib_dir()
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames
                         if d not in ("site-packages", "__pycache__"))
    rel = pathlib.Path(dirpath).relative_to(root)
    out += [str(rel / f) for f in filenames if f.endswith(".py")]
  return sorted(out)


def is_heldout(path: str, heldout_frac: float) -> bool:
  """Whether the file at relative `path` belongs to the held-out set."""
  return zlib.crc32(path.encode()) % 1000 < round(1000 * heldout_frac)


def join(root: pathlib.Path, files: list[str], max_bytes: int,
         seed: int = 0) -> tuple[np.ndarray, list[str]]:
  """`(bytes [N] uint8, the files used)`: `files` in a seeded random order,
  each followed by a NUL byte, until `max_bytes` (the last file cut)."""
  order = np.random.default_rng(seed).permutation(len(files))
  parts, used, n = [], [], 0
  for i in order:
    data = (root / files[i]).read_bytes().replace(b"\0", b" ") + b"\0"
    parts.append(data[:max_bytes - n])
    used.append(files[i])
    n += len(parts[-1])
    if n >= max_bytes:
      break
  return np.frombuffer(b"".join(parts), np.uint8).copy(), used


@dataclasses.dataclass(frozen=True)
class Corpus:
  train: np.ndarray          # [N] uint8
  heldout: np.ndarray        # [M] uint8
  train_files: tuple[str, ...]
  heldout_files: tuple[str, ...]
  root: str


def stdlib_corpus(*, max_train_bytes: int = 4_000_000,
                  max_heldout_bytes: int = 400_000,
                  heldout_frac: float = 0.1, seed: int = 0,
                  root: pathlib.Path | None = None) -> Corpus:
  """The standard library's text, split by file (see the module)."""
  root = pathlib.Path(root or stdlib_dir())
  files = stdlib_files(root)
  if not files:
    raise ValueError(f"no .py files under {root}")
  held = [f for f in files if is_heldout(f, heldout_frac)]
  train = [f for f in files if not is_heldout(f, heldout_frac)]
  train_bytes, train_used = join(root, train, max_train_bytes, seed)
  held_bytes, held_used = join(root, held, max_heldout_bytes, seed)
  return Corpus(train_bytes, held_bytes, tuple(train_used), tuple(held_used),
                str(root))


def windows(data: Array, key: Array, batch_size: int, length: int) -> Array:
  """`[B, length]` int32 windows of `data` at uniform random offsets."""
  start = jax.random.randint(key, (batch_size,), 0, data.shape[0] - length)
  return data[start[:, None] + jnp.arange(length)].astype(jnp.int32)


def sampler(data: np.ndarray, length: int):
  """`sample_fn(key, batch_size) -> [B, length]` token windows of `data`
  (put on the device once)."""
  if data.shape[0] <= length:
    raise ValueError(f"{data.shape[0]} bytes are too few for windows of "
                     f"{length}")
  on_device = jnp.asarray(data)
  return lambda key, batch_size: windows(on_device, key, batch_size, length)


def tiles(data: np.ndarray, length: int) -> np.ndarray:
  """`data` cut into consecutive non-overlapping windows `[n, length]` (the
  remainder dropped): every byte once, for a held-out evaluation."""
  n = data.shape[0] // length
  return data[:n * length].reshape(n, length).astype(np.int32)
