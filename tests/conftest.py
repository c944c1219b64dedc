"""Shared fixtures (small targets with known structure) and checks."""

import contextlib
import os
import shutil
import tempfile

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import apd_jax
from apd_jax import engine
from apd_jax.training import checkpoint as ckpt_lib

# One persistent compilation cache per test session, shared by the xdist
# workers and every subprocess the tests start (they inherit the
# environment): the same small programs are compiled by many tests and
# many processes, and compiling dominates most tests' time. Fresh each
# session (deleted at the end), so timings never rest on an earlier run.
# APD_JAX_TEST_JIT_CACHE=0 turns it off.
CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
# And XLA's CPU backend at its lowest optimisation level: programs compile
# in about half the time and run a little slower, which for tests of a few
# steps is the better trade (the numbers are those of the same arithmetic;
# the tests compare runs under the one setting, or against hand
# computations with float32 tolerances). APD_JAX_TEST_FAST_COMPILE=0 keeps
# XLA's default.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(*flags):
  """`XLA_FLAGS` for a subprocess: this session's, plus `flags`."""
  return " ".join((os.environ.get("XLA_FLAGS", ""), *flags)).strip()


def pytest_configure(config):
  if hasattr(config, "workerinput"):      # an xdist worker: set by the
    return                                # controller, which started it
  if os.environ.get("APD_JAX_TEST_FAST_COMPILE") != "0":
    os.environ["XLA_FLAGS"] = xla_flags(FAST_COMPILE)
  if ("JAX_COMPILATION_CACHE_DIR" in os.environ    # the caller's own
      or os.environ.get("APD_JAX_TEST_JIT_CACHE") == "0"):
    return
  path = tempfile.mkdtemp(prefix="apd_jax_test_jit_cache_")
  config._apd_jax_jit_cache = path
  os.environ.update(CACHE_ENV, JAX_COMPILATION_CACHE_DIR=path)
  # This process imported JAX already (above): it reads the environment
  # only then.
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_collection_modifyitems(items):
  """The tests marked `long` first (a stable sort: otherwise in collection
  order): the last tests a worker picks up are short, so the two workers
  of `-n 2` finish at about the same time."""
  items.sort(key=lambda item: item.get_closest_marker("long") is None)


def pytest_unconfigure(config):
  path = getattr(config, "_apd_jax_jit_cache", None)
  if path:
    shutil.rmtree(path, ignore_errors=True)


def cache_env():
  """The compilation cache's settings, for a subprocess given its own
  environment."""
  return {k: os.environ[k] for k in
          ("JAX_COMPILATION_CACHE_DIR", *CACHE_ENV) if k in os.environ}


@contextlib.contextmanager
def x64():
  """64-bit floats inside the block (for finite-difference checks)."""
  ctx = getattr(jax, "enable_x64", None)
  if ctx is None:  # older JAX
    from jax.experimental import enable_x64 as ctx  # noqa: PLC0415
  with ctx(True):
    yield


def mlp_apply(params, x):
  """A two-layer MLP `ReLU(x W1 + b1) W2`, batched."""
  h = jax.nn.relu(x @ params["layer1"]["w"] + params["layer1"]["b"])
  return h @ params["layer2"]["w"]


@pytest.fixture
def mlp():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(42), 3)
  params = {"layer1": {"w": jax.random.normal(k1, (4, 6)),
                       "b": 0.1 * jax.random.normal(k3, (6,))},
            "layer2": {"w": jax.random.normal(k2, (6, 3))}}
  sample = lambda key, n: jax.random.normal(key, (n, 4))  # noqa: E731
  return mlp_apply, params, sample


def random_components(key, shapes, C, m):
  from apd_jax.core import components  # noqa: PLC0415
  return components.init_random(key, shapes, n_components=C,
                                rank={n: m for n in shapes})


@pytest.fixture
def keys():
  return jax.random.split(jax.random.PRNGKey(0), 8)


def allclose(a, b, **kw):
  return bool(jnp.allclose(a, b, **kw))


def apd_and_plan(n_components=64, **options):
  """`(APD, Plan)` from one set of keywords (each to the object with that
  field; `n_components` is only validated: the loss takes C from the
  factors)."""
  import dataclasses  # noqa: PLC0415

  from apd_jax.methods.apd import APD  # noqa: PLC0415
  from apd_jax.methods.apd_objective import Plan  # noqa: PLC0415
  names = {f.name for f in dataclasses.fields(Plan)}
  plan = Plan(**{k: v for k, v in options.items() if k in names})
  method = APD(n_components=n_components,
               **{k: v for k, v in options.items() if k not in names})
  return method, plan


def assert_gradients_match_finite_differences(f, *args, eps=1e-6):
  """`jax.grad(f)` in every argument equals central differences entry by
  entry, to 1e-6 (call inside `x64()` with float64 arguments)."""
  grads = jax.grad(f, argnums=tuple(range(len(args))))(*args)
  flat, unravel = jax.flatten_util.ravel_pytree(args)
  g_flat = jax.flatten_util.ravel_pytree(grads)[0]
  for i in range(flat.size):
    e = jnp.zeros_like(flat).at[i].set(eps)
    fd = (f(*unravel(flat + e)) - f(*unravel(flat - e))) / (2 * eps)
    np.testing.assert_allclose(g_flat[i], fd, rtol=1e-6, atol=1e-8)


def run_stopped_and_resumed(state0, step, key, directory, *, steps=8,
                            stop=4, log_every=2):
  """`(whole, restored, history, resumed)`: the run of `steps` from
  `state0`; the one stopped at `stop` with a checkpoint in `directory`, the
  state and history restored from it, and that state run on to `steps`
  (the loop donates its state: each run starts from a copy)."""
  fresh = lambda: jax.tree.map(jnp.copy, state0)  # noqa: E731
  whole, _ = engine.fit(fresh(), step, key, steps=steps,
                        log_every=log_every, progress=False)
  ckpt = ckpt_lib.Checkpoints(str(directory), every=log_every)
  engine.fit(fresh(), step, key, steps=stop, log_every=log_every,
             checkpoints=ckpt, progress=False)
  restored, history = ckpt.restore(fresh())
  resumed, _ = engine.fit(jax.tree.map(jnp.copy, restored), step, key,
                          steps=steps, log_every=log_every, history=history,
                          progress=False)
  ckpt.close()
  return whole, restored, history, resumed


def assert_trees_close(a, b, **tolerance):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, **tolerance)


def assert_seed_sweep_equals_runs(apply_fn, params, sample, method,
                                  training, **tolerance):
  """A sweep over seeds 0 and 1: each run's components are those of its
  own `decompose`."""
  swept = apd_jax.decompose_sweep(apply_fn, params, sample, include="W",
                                  method=method, training=training,
                                  sweep={"seed": (0, 1)})
  for seed, d in zip((0, 1), swept.decompositions, strict=True):
    one = apd_jax.decompose(apply_fn, params, sample, include="W",
                            method=method,
                            training=training.replace(seed=seed))
    assert_trees_close(d.components, one.components, **tolerance)
