"""What makes the compiled steps fast on XLA:CPU, in one place.

Two settings and one helper, none of which changes a result:

* `compiler_options()`: XLA:CPU's XNNPACK-based ("ynn") fusions made the
  residual-MLP steps 1.3-1.6x slower (a product-and-reduce fusion took half
  the rank-1 step; see benchmark.py), so the steps are compiled without them.
* `unroll_threefry()`: JAX lowers its threefry PRNG on CPU as a rolled loop
  of 5 iterations (to save compile time), and each iteration is a separate
  pass over the random bits with copies of the loop state between them. On
  a TMS step, drawing the batch this way took half the step. The GPU
  lowering (JAX's own, the same rounds written out) is one fused pass; on
  CPU it draws the TMS batch 8-10x faster with bit-identical numbers
  (tests/training/test_cpu.py). Registered when a run starts
  (`apply_tweaks`, unless `Training(cpu_tweaks=False)`), never on import;
  where JAX's internals differ from those it was written for, it leaves JAX
  as it is.
* `computed_once(x)`: XLA counts the written-out hash as cheap and copies it
  into every fusion that reads a draw; a per-example draw broadcast over
  `[B, C+1]` coefficients (VPD's routes and its adversarial-or-stochastic
  pick) was hashed again for each of the C+1 entries, in the forward and
  the backward fusions: 2.5-4.5x VPD's TMS steps. Passed through a sort by
  position (an operation XLA never fuses), the draw is stored once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from absl import logging

_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.lru_cache(maxsize=None)
def compiler_options() -> tuple[tuple[str, str], ...]:
  """The XLA options for the compiled steps: `_CPU_OPTIONS` on a CPU backend
  whose XLA knows them, else none."""
  if jax.default_backend() != "cpu":
    return ()
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS)(0.0)
  except Exception:  # noqa: BLE001 - an XLA without the option
    return ()
  return tuple(_CPU_OPTIONS.items())


@functools.lru_cache(maxsize=None)
def unroll_threefry() -> bool:
  """Lowers `threefry2x32` on CPU as on the other platforms (unrolled);
  returns whether it did."""
  try:
    from jax._src.interpreters import mlir  # noqa: PLC0415
    from jax._src.random import threefry2x32 as threefry  # noqa: PLC0415
    rule = threefry._threefry2x32_lowering_rule  # noqa: SLF001
    mlir.register_lowering(threefry.threefry2x32_p, rule, platform="cpu")
  except (ImportError, AttributeError) as e:
    logging.info("threefry keeps its rolled CPU lowering (%s)", e)
    return False
  return True


def computed_once(x: jax.Array) -> jax.Array:
  """`x` unchanged, stored once: sorted by its positions, a sort that XLA
  does not fuse into the fusions that read it (see the module docstring).
  For small per-example draws that many larger fusions broadcast, and for
  keys (typed keys through their data)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(computed_once(jax.random.key_data(x)),
                                    impl=jax.random.key_impl(x))
  flat = x.reshape(-1)
  pos = jax.lax.iota(jnp.int32, flat.shape[0])
  return jax.lax.sort((pos, flat), num_keys=1)[1].reshape(x.shape)


def apply_tweaks() -> None:
  """What a run starting on this machine applies (`Training.cpu_tweaks`):
  the unrolled threefry lowering on CPU."""
  unroll_threefry()
