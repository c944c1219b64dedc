"""Targets in bfloat16: float32 components and metrics, the cheap mode."""

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax import APD
from apd_jax import SPD
from apd_jax import Training
from apd_jax import decompose
from apd_jax.core import attribution
from apd_jax.core import target as target_lib
from apd_jax.engine import api
from apd_jax.fast import attribute as fast_attribute
from apd_jax.targets import tms

TMS = tms.init(jax.random.PRNGKey(0), n_features=5, n_hidden=2)
SAMPLE = tms.sampler(n_features=5, feature_probability=0.05)


def bf16(tree):
  return jax.tree.map(lambda a: a.astype(jnp.bfloat16), tree)


def bf16_sample(key, n):
  return SAMPLE(key, n).astype(jnp.bfloat16)


def per_token_mlp(p, x):
  """`relu(x W1) W2` on every row of `x [B, T, d]`."""
  return jax.nn.relu(x @ p["w1"]) @ p["w2"]


def sequences(key, n):
  return jax.random.normal(key, (n, 5, 6)).astype(jnp.bfloat16)


SEQ = bf16({"w1": jax.random.normal(jax.random.PRNGKey(1), (6, 16)) / 3,
            "w2": jax.random.normal(jax.random.PRNGKey(2), (16, 6)) / 4})


def run(method, **training):
  """A few steps of `method` on a bfloat16 target with bfloat16 inputs:
  SPD on TMS 5-2, APD per position on a per-token MLP."""
  t = dict(steps=10, batch_size=64, lr=1e-2, log_every=10, eval_batches=1,
           progress=False)
  target = ((tms.apply, bf16(TMS), bf16_sample, "W") if
            isinstance(method, SPD) else
            (per_token_mlp, SEQ, sequences, "w"))
  return decompose(*target[:3], include=target[3], method=method,
                   training=Training(**{**t, **training}))


def float_metrics(result):
  return {k: v for k, v in result.metrics.items()
          if isinstance(v, float) and k != "wall_seconds"}


def assert_float32(result):
  assert "evaluation_error" not in result.metrics
  for leaf in jax.tree.leaves(result.components):
    assert leaf.dtype == jnp.float32
  values = float_metrics(result)
  assert values and all(math.isfinite(v) for v in values.values())


@pytest.mark.parametrize("method", [
    SPD(n_components=5, importance_coeff=3e-3, layerwise_coeff=0.0),
    APD(n_components=6, topk=1.0, rank=2, per_position=True)],
                         ids=["spd", "apd_per_position"])
def test_bf16_target_in_its_own_dtype_is_close_to_the_float32_run(method):
  """By default the target's params are cast up to float32; in its own
  dtype (`compute_dtype=None`) it trains and evaluates too, with float32
  components and metrics close to the float32 run's, and APD's plan is
  forward mode in both."""
  want = run(method)
  got = run(method, compute_dtype=None)
  assert want.target.params[want.target.names[0][2:-2]].dtype == jnp.float32
  assert got.target.params[got.target.names[0][2:-2]].dtype == jnp.bfloat16
  for result in (want, got):
    assert_float32(result)
    assert result.metrics.get("attribution_mode", "forward") == "forward"
  for k, v in float_metrics(want).items():
    if "recon" in k or k == "faithfulness":
      np.testing.assert_allclose(float_metrics(got)[k], v, rtol=0.05,
                                 err_msg=k)
    elif k.startswith("l0"):   # a count: an example more or less
      np.testing.assert_allclose(float_metrics(got)[k], v, atol=0.1,
                                 err_msg=k)
  x = (bf16_sample if isinstance(method, SPD) else sequences)(
      jax.random.PRNGKey(3), 4)
  for score in got.scores(x).values():
    assert score.dtype == jnp.float32


def test_optimiser_state_is_float32_beside_a_bf16_target():
  method = SPD(n_components=5, importance_coeff=3e-3)
  training = Training(steps=10, batch_size=64, compute_dtype=None)
  target = api.make_target(tms.apply, bf16(TMS), "W", log=False,
                           sample_fn=bf16_sample, compute_dtype=None)
  state = api.init_state(method, target, training, sample_fn=bf16_sample)
  dtypes = {a.dtype for a in jax.tree.leaves((state.components,
                                              state.opt_state))
            if jnp.issubdtype(a.dtype, jnp.floating)}
  assert dtypes == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("compute_dtype", ["float32", None])
def test_per_position_plan_on_a_bf16_target_is_forward_mode(
    caplog, compute_dtype):
  """Forward mode pushes C = 6 tangents where reverse pulls 6 cotangents
  per position: forward is the cheap one, and it compiles (nothing
  logged)."""
  caplog.set_level(logging.WARNING, logger="absl")
  method = APD(n_components=6, topk=1.0, rank=2, per_position=True)
  target = api.make_target(per_token_mlp, SEQ, "w", log=False,
                           compute_dtype=compute_dtype)
  comps = method.init_params(jax.random.PRNGKey(0), target)
  plan = method.plan(target, sequences, 64, comps)
  assert plan.attribution_mode == "forward"
  assert not [r for r in caplog.records if "fail to compile" in
              r.getMessage()]


def test_a_mode_that_fails_to_compile_is_logged_and_not_chosen(
    monkeypatch, caplog):
  caplog.set_level(logging.WARNING, logger="absl")
  real = fast_attribute.attributions

  def forward_fails(*args, mode="forward", **kw):
    if mode == "forward":
      raise TypeError("forward mode is broken here")
    return real(*args, mode=mode, **kw)

  monkeypatch.setattr(fast_attribute, "attributions", forward_fails)
  method = APD(n_components=6, topk=1.0, rank=2, per_position=True)
  target = api.make_target(per_token_mlp, SEQ, "w", log=False)
  comps = method.init_params(jax.random.PRNGKey(0), target)
  plan = method.plan(target, sequences, 64, comps)
  assert plan.attribution_mode == "reverse"
  (line,) = [r.getMessage() for r in caplog.records
             if "forward mode fail" in r.getMessage()]
  assert "TypeError: forward mode is broken here" in line


def test_no_mode_that_compiles_raises_naming_each(monkeypatch):
  def broken(*args, mode="forward", **kw):
    raise TypeError(f"{mode} is broken")

  monkeypatch.setattr(fast_attribute, "attributions", broken)
  method = APD(n_components=6, topk=1.0, rank=2, per_position=True)
  target = api.make_target(per_token_mlp, SEQ, "w", log=False)
  comps = method.init_params(jax.random.PRNGKey(0), target)
  with pytest.raises(ValueError, match="no way of computing the attributions"
                     ) as e:
    method.plan(target, sequences, 64, comps)
  assert "forward mode: TypeError: forward is broken" in str(e.value)
  assert "reverse mode (contractions direct, direct)" in str(e.value)


def test_choose_mode_logs_a_failing_mode_and_raises_when_both_fail(caplog):
  caplog.set_level(logging.WARNING, logger="absl")
  x = jax.ShapeDtypeStruct((4, 3), jnp.float32)

  def batched(fails):
    def make(mode):
      def fn(x):
        if mode in fails:
          raise TypeError(f"no {mode}")
        return x * 2.0
      return fn
    return make

  assert attribution.choose_mode(batched({"forward"}), x) == "reverse"
  assert any("forward mode fail" in r.getMessage() for r in caplog.records)
  with pytest.raises(ValueError, match="forward mode: TypeError: no forward"
                     ".*reverse mode: TypeError: no reverse"):
    attribution.choose_mode(batched({"forward", "reverse"}), x)
  with pytest.raises(TypeError, match="no forward"):   # flops never hides it
    attribution.flops(batched({"forward"})("forward"), x)


def test_upcast_casts_only_narrower_floating_leaves():
  tree = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2, jnp.float16),
          "c": np.ones(2, np.float64), "i": jnp.ones(2, jnp.int32),
          "s": 1.0}
  got = target_lib.upcast(tree, "float32")
  assert {k: str(getattr(v, "dtype", "none")) for k, v in got.items()} == {
      "a": "float32", "b": "float32", "c": "float64", "i": "int32",
      "s": "none"}
  assert target_lib.upcast(tree, None) is tree


@pytest.mark.parametrize("value,want", [
    ("bfloat16", "bfloat16"), (jnp.float16, "float16"), (None, None)])
def test_compute_dtype_is_a_floating_dtype_name_or_none(value, want):
  assert Training(compute_dtype=value).compute_dtype == want
  assert Training().compute_dtype == "float32"


@pytest.mark.parametrize("bad", ["int32", "nope"])
def test_compute_dtype_refuses_what_is_not_floating(bad):
  with pytest.raises(ValueError, match="compute_dtype must be a floating"):
    Training(compute_dtype=bad)
