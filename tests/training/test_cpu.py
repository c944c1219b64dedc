"""The CPU settings change speed, never a number."""

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.random import threefry2x32 as threefry

from apd_jax.training import cpu


def test_unrolled_threefry_gives_the_rolled_loops_bits():
  assert cpu.unroll_threefry()
  k1, k2, x1, x2 = (jax.random.bits(k, (257,), jnp.uint32) for k in
                    jax.random.split(jax.random.PRNGKey(3), 4))
  # The primitive, lowered by the registered (unrolled) CPU rule ...
  got = jax.jit(threefry.threefry2x32_p.bind)(k1[0], k2[0], x1, x2)
  # ... against the rolled loop JAX uses on CPU otherwise, run op by op.
  want = threefry._threefry2x32_lowering(  # noqa: SLF001
      k1[0], k2[0], x1, x2, use_rolled_loops=True)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))



_CPU_RULES = """
import sys
from jax._src.interpreters import mlir
from jax._src.random import threefry2x32 as threefry
def cpu_rules():
  return mlir._platform_specific_lowerings["cpu"].get(threefry.threefry2x32_p)
before = cpu_rules()
import apd_jax
from apd_jax.cli import experiment
assert cpu_rules() is before, "importing apd_jax changed a lowering rule"
apd_jax.engine.api.cpu.apply_tweaks()        # where a run starts
assert cpu_rules() is not before, "apply_tweaks registered nothing"
print("ok")
"""


def test_importing_the_package_changes_nothing_in_jax():
  """The threefry rule is registered where a run starts, never on import
  (a fresh interpreter: this process has runs behind it)."""
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415
  run = subprocess.run([sys.executable, "-c", _CPU_RULES],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_the_compiler_options_change_values_only_by_rounding():
  """SPD's TMS 5-2 step (batch 256), 3 steps compiled with the run's
  options and with XLA's defaults, both optimised as a run is (level 2;
  the suite's own level 0 would not vectorise at all)."""
  import dataclasses  # noqa: PLC0415

  from apd_jax.cli import bench_cases  # noqa: PLC0415
  from apd_jax.cli import benchmark  # noqa: PLC0415
  options = dict(cpu.compiler_options())
  assert options["xla_cpu_prefer_vector_width"] == "512"
  (case,) = [c for c in bench_cases.CASES if c.name == "spd_tms_5_2"]
  step, state, key, _, _ = benchmark.build(
      dataclasses.replace(case, batch_size=256))

  def run(state, key):
    return jax.lax.scan(lambda s, _: step(s, key), state, None, length=3)

  runs = [jax.jit(run, compiler_options=dict(
      opts, xla_backend_optimization_level=2))(state, key)
          for opts in (options, {})]
  for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1]),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
