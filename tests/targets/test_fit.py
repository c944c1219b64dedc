"""The targets' training loop: chunked runs equal the single scan, and a
non-finite loss stops training naming its step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from apd_jax.targets import fit

W_TRUE = jnp.array([1.0, -2.0, 0.5, 3.0])


def draw(key, batch_size):
  return jax.random.normal(key, (batch_size, 4))


def mse(w, x):
  return jnp.mean((x @ w - x @ W_TRUE) ** 2)


def run(**kw):
  return fit.fit(mse, jnp.zeros(4), optax.adam(0.3), draw,
                 jax.random.PRNGKey(0), steps=10, batch_size=16, **kw)


def test_chunks_equal_the_single_scan_and_log_each_chunk():
  params, losses = run()
  calls = []
  chunked, chunked_losses = run(
      log_every=4, on_log=lambda step, p, mean: calls.append(
          (step, np.asarray(p), mean)))
  np.testing.assert_allclose(chunked, params, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(chunked_losses, losses, rtol=1e-6, atol=1e-7)
  assert losses.shape == (10,) and losses[-1] < 0.1 * losses[0]
  assert [c[0] for c in calls] == [4, 8, 10]     # the last chunk is short
  for (step, _, mean), start in zip(calls, [0, 4, 8], strict=True):
    assert mean == pytest.approx(float(jnp.mean(losses[start:step])),
                                 rel=1e-5)
  np.testing.assert_allclose(calls[-1][1], params, rtol=1e-6, atol=1e-7)
  # The params after 4 steps are those of a 4-step run.
  four, _ = fit.fit(mse, jnp.zeros(4), optax.adam(0.3), draw,
                    jax.random.PRNGKey(0), steps=4, batch_size=16)
  np.testing.assert_allclose(calls[0][1], four, rtol=1e-6, atol=1e-7)


def nan_from_step_6(p, x):
  """`p` falls by 1 a step (SGD, gradient 1), from 1; the value is NaN once
  `p + 3.5 < 0`: at the 6th step."""
  return p + 0.0 * jnp.sum(x) + jnp.sqrt(jax.lax.stop_gradient(p) + 3.5)


@pytest.mark.parametrize("log_every", [None, 4])
def test_a_non_finite_loss_raises_naming_the_step(log_every):
  calls = []
  with pytest.raises(FloatingPointError, match="at step 6$"):
    fit.fit(nan_from_step_6, jnp.array(1.0), optax.sgd(1.0), draw,
            jax.random.PRNGKey(0), steps=12, batch_size=2,
            log_every=log_every, on_log=lambda step, *_: calls.append(step))
  assert calls == ([] if log_every is None else [4])
