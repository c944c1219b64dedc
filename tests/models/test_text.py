"""The corpus: split by file, deterministic, every byte accounted for."""

import json
import zlib

import jax
import numpy as np
import pytest

from apd_jax.models import text


@pytest.fixture
def library(tmp_path):
  """A fake standard library: 30 modules, a package, a site-packages."""
  for i in range(30):
    (tmp_path / f"mod{i:02d}.py").write_text(f"x = {i}\n" * (i + 1))
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "inner.py").write_text("y = 'inner'\n")
  (tmp_path / "pkg" / "notes.txt").write_text("not python")
  (tmp_path / "site-packages").mkdir()
  (tmp_path / "site-packages" / "third.py").write_text("z = 1\n")
  return tmp_path


def test_files_and_the_split_by_file(library):
  files = text.stdlib_files(library)
  assert len(files) == 31 and "pkg/inner.py" in files
  assert not any("site-packages" in f or f.endswith(".txt") for f in files)
  c = text.stdlib_corpus(root=library, heldout_frac=0.3,
                         max_train_bytes=10**6, max_heldout_bytes=10**6)
  assert set(c.train_files) | set(c.heldout_files) == set(files)
  assert not set(c.train_files) & set(c.heldout_files)
  assert set(c.heldout_files) == {
      f for f in files if zlib.crc32(f.encode()) % 1000 < 300}
  # Every file's bytes and one separator each, nothing else.
  size = sum((library / f).stat().st_size + 1 for f in c.train_files)
  assert c.train.size == size
  assert int(np.sum(c.train == text.SEPARATOR)) == len(c.train_files)
  again = text.stdlib_corpus(root=library, heldout_frac=0.3,
                             max_train_bytes=10**6, max_heldout_bytes=10**6)
  np.testing.assert_array_equal(again.train, c.train)
  other = text.stdlib_corpus(root=library, heldout_frac=0.3, seed=1,
                             max_train_bytes=10**6, max_heldout_bytes=10**6)
  assert other.train_files != c.train_files            # another order
  assert sorted(other.train_files) == sorted(c.train_files)


def test_byte_budget_cuts_the_last_file(library):
  c = text.stdlib_corpus(root=library, max_train_bytes=100,
                         max_heldout_bytes=10**6)
  assert c.train.size == 100
  joined = b"".join((library / f).read_bytes() + b"\0"
                    for f in c.train_files)
  assert len(joined) > 100        # the last file used was cut
  np.testing.assert_array_equal(c.train,
                                np.frombuffer(joined[:100], np.uint8))


def test_windows_are_deterministic_and_tiles_cover_once():
  data = np.arange(1000) % 251
  sample = text.sampler(data.astype(np.uint8), 16)
  a = sample(jax.random.PRNGKey(0), 8)
  np.testing.assert_array_equal(a, sample(jax.random.PRNGKey(0), 8))
  assert not np.array_equal(a, sample(jax.random.PRNGKey(1), 8))
  assert a.shape == (8, 16) and a.dtype == np.int32
  for row in np.asarray(a):                       # consecutive bytes
    start = int(np.flatnonzero(data == row[0])[0])
    np.testing.assert_array_equal(row, data[start:start + 16] % 251)
  tiles = text.tiles(data.astype(np.uint8), 64)
  assert tiles.shape == (15, 64)
  np.testing.assert_array_equal(tiles.reshape(-1), data[:960])
  with pytest.raises(ValueError, match="too few"):
    text.sampler(data[:10].astype(np.uint8), 16)


def test_the_real_standard_library_is_found():
  files = text.stdlib_files()
  assert "os.py" in files and len(files) > 100
  assert json.dumps(files)          # plain relative paths
