"""The APD method object: its plan (what the library derives) and its
traced options."""

import jax
import numpy as np

from apd_jax import APD
from apd_jax.engine import api
from apd_jax.targets import resid_mlp
from apd_jax.targets import tms


def resid_target():
  params = resid_mlp.init(jax.random.PRNGKey(0), n_features=100,
                          d_resid=1000, d_mlp=50, n_layers=1)
  target = api.make_target(resid_mlp.apply, params, "W_in|W_out",
                           has_aux=True, log=False)
  return target, resid_mlp.sampler(n_features=100, feature_probability=0.01)


def test_plan_keeps_projections_where_they_are_cheapest():
  """On the paper's 1-layer residual MLP at rank 1, reverse mode with 10
  output projections costs fewer flops than any exact mode, so the plan
  keeps the estimate; without projections it picks an exact mode."""
  target, sample = resid_target()
  method = APD(n_components=130, topk=1.28, rank=1, hidden_act_coeff=1.0,
               hidden_acts="post_relu", attribution_projections=10)
  comps = method.init_params(jax.random.PRNGKey(1), target)
  plan = method.plan(target, sample, 2048, comps)
  assert plan.factored
  assert (plan.attribution_mode, plan.attribution_projections) == (
      "reverse", 10)
  exact = method.replace(attribution_projections=0).plan(
      target, sample, 2048, comps)
  assert exact.attribution_projections == 0
  assert exact.attribution_mode == "lazy"


def test_tiny_targets_take_the_dense_form():
  params = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
  target = api.make_target(tms.apply, params, "W", log=False)
  method = APD(n_components=5, topk=0.211)
  sample = tms.sampler(n_features=5, feature_probability=0.05)
  plan = method.plan(target, sample, 64,
                     method.init_params(jax.random.PRNGKey(0), target))
  assert not plan.factored and plan.attribution_mode == "forward"
  assert method.replace(factored=True).plan(
      target, sample, 64, method.init_params(jax.random.PRNGKey(0),
                                             target)).factored


def test_hypers_and_sweep_bound():
  m = APD(n_components=5, topk=0.211, simplicity_coeff=0.7)
  h = m.hypers(topk=0.3)
  assert (h.topk, h.simplicity_coeff, h.lr_scale) == (0.3, 0.7, 1.0)
  runs = [dict(topk=0.1), dict(topk=0.4, hidden_act_coeff=-2.0)]
  bound = m.bound(runs)
  assert (bound.topk, bound.hidden_act_coeff) == (0.4, 2.0)
  np.testing.assert_equal(m.SWEEPABLE[0], "topk")
