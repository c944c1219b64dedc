import jax
import numpy as np
import pytest

from apd_jax.analysis import plotting


@pytest.mark.parametrize("shape,C", [((2, 5), 5), ((10, 40), 50)])
def test_component_figure_is_written(tmp_path, shape, C):
  W = np.asarray(jax.random.normal(jax.random.PRNGKey(0), shape))
  P = np.stack([W * (np.arange(shape[1]) == c % shape[1]) for c in range(C)])
  path = tmp_path / "c.png"
  plotting.plot_columns(W, P, str(path), title="t")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_figure_is_written(tmp_path):
  hist = [dict(step=s, loss=1.0 / s, faithfulness=0.1 / s, minimality=0.5,
               simplicity=0.2, l0=1.0) for s in (10, 20, 30)]
  path = tmp_path / "h.png"
  plotting.plot_history(hist, str(path))
  assert path.stat().st_size > 1000
