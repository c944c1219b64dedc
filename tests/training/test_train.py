"""Short end-to-end runs of the compiled step."""

import jax
import jax.numpy as jnp
import pytest

from apd_jax.engine import api
from apd_jax.methods.apd import APD
from apd_jax.targets import tms
from apd_jax.training import train
from apd_jax.training.options import Training


def setup(sample_fn=None, steps=600):
  params, _ = tms.train(jax.random.PRNGKey(0), n_features=5, n_hidden=2,
                        steps=1000)
  target = api.make_target(tms.apply, params, "W")
  method = APD(n_components=5, topk=0.211, rank=3, simplicity_coeff=0.7,
               attribution_point="components")
  training = Training(steps=steps, batch_size=512, lr=3e-2, warmup_frac=0.05)
  sample_fn = sample_fn or tms.sampler(n_features=5, feature_probability=0.05)
  state = api.init_state(method, target, training, seed=1)
  plan = method.plan(target, sample_fn, 512, state.components)
  return state, api.make_train_step(method, plan, target, sample_fn, training)


def test_short_tms_run_lowers_the_losses():
  state, step = setup()
  state, hist = train.fit(state, step, jax.random.PRNGKey(2), steps=600,
                          log_every=100)
  first, last = hist[0], hist[-1]
  assert last["faithfulness"] < 0.01 * first["faithfulness"]
  assert last["minimality"] < first["minimality"]
  assert last["loss"] < 0.2 * first["loss"]
  assert int(state.step) == 600


def test_step_is_traced_once():
  state, step = setup(steps=40)
  traces = []

  def counted(s, k):
    traces.append(1)
    return step(s, k)

  train.fit(state, counted, jax.random.PRNGKey(2), steps=40, log_every=10)
  assert len(traces) == 1


def test_non_finite_loss_stops_with_the_step_and_terms():
  bad = lambda key, n: jnp.full((n, 5), jnp.nan)  # noqa: E731
  state, step = setup(sample_fn=bad, steps=20)
  with pytest.raises(FloatingPointError, match=r"steps 1\.\.10: .*loss=nan"):
    train.fit(state, step, jax.random.PRNGKey(2), steps=20, log_every=10)
