import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax.core import components as C
from apd_jax.methods import apd_objective
from apd_jax.training import optim


def test_schedule_warms_up_from_zero_then_holds():
  f = optim.schedule(0.1, 100, warmup_frac=0.1, kind="constant")
  assert float(f(0)) == 0.0
  np.testing.assert_allclose(float(f(5)), 0.05, rtol=1e-6)
  np.testing.assert_allclose(float(f(10)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(f(99)), 0.1, rtol=1e-6)


def test_cosine_is_a_quarter_wave_to_zero():
  f = optim.schedule(0.1, 101, warmup_frac=0.2, kind="cosine")
  # warm-up of 20 steps, then cos(pi/2 * t/80) over the remaining 80
  np.testing.assert_allclose(float(f(20)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(f(60)), 0.1 * 2 ** -0.5, rtol=1e-5)
  assert abs(float(f(100))) < 1e-8


def test_cosine_ends_at_its_final_fraction():
  f = optim.schedule(0.1, 101, warmup_frac=0.2, kind="cosine", final_frac=0.1)
  np.testing.assert_allclose(float(f(20)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(f(60)), 0.1 * (0.1 + 0.9 * 2 ** -0.5),
                             rtol=1e-5)
  np.testing.assert_allclose(float(f(100)), 0.01, rtol=1e-5)
  from apd_jax import Training  # noqa: PLC0415
  with pytest.raises(ValueError, match="lr_final_frac"):
    Training(lr_final_frac=1.5)


def test_half_cosine_is_a_half_wave_to_its_final_fraction():
  f = optim.schedule(0.1, 101, warmup_frac=0.2, kind="half_cosine",
                     final_frac=0.1)
  # 20 warm-up steps, then 0.1 (0.1 + 0.9 (1 + cos(pi t/80)) / 2)
  np.testing.assert_allclose(float(f(20)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(f(40)), 0.1 * (0.1 + 0.9 * (
      1 + 2 ** -0.5) / 2), rtol=1e-5)
  np.testing.assert_allclose(float(f(60)), 0.1 * 0.55, rtol=1e-5)
  np.testing.assert_allclose(float(f(100)), 0.01, rtol=1e-5)
  with pytest.raises(ValueError, match="lr_schedule"):
    optim.schedule(0.1, 10, kind="half-cosine")


def test_no_warmup_starts_at_lr():
  assert float(optim.schedule(0.1, 100)(0)) == pytest.approx(0.1)


def test_projection_removes_parallel_part(keys):
  comps = C.normalize_u(C.init_random(keys[0], {"a": (5, 3)}, n_components=2,
                                      rank={"a": 2}))
  grads = jax.tree.map(jnp.ones_like, comps)
  tx = apd_objective.project_out_parallel()
  out, _ = tx.update(grads, tx.init(comps), comps)
  dots = jnp.sum(out.U["a"] * comps.U["a"], axis=1)
  np.testing.assert_allclose(dots, 0.0, atol=1e-6)
  np.testing.assert_array_equal(out.V["a"], grads.V["a"])
