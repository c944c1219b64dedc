"""What makes the compiled steps fast on XLA:CPU, in one place.

Two settings; neither changes a result beyond float rounding:

* `compiler_options()`: XLA:CPU's XNNPACK-based ("ynn") fusions made the
  residual-MLP steps 1.3-1.6x slower (a product-and-reduce fusion took half
  the rank-1 step; see benchmark.py), so the steps are compiled without them.
  And the fused loops are vectorised for 512-bit registers where the CPU
  has them (XLA's default prefers 256 bits; a CPU without AVX-512 ignores
  the preference): on an AVX-512 CPU the SPD steps ran 4-16% faster (most
  where the importance MLPs' `erf` and `exp` dominate: TMS 40-10), the APD
  steps as fast as before (benchmark.py, 2026-12-07). Wider
  vectors add some float sums in another order: values equal to rounding
  (relative 6e-7 after 5 steps), not bit for bit.
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
  Written out, the hash is copied into every fusion that reads a draw;
  `methods.routing.drawn_once` computes a draw that many fusions read
  once.
"""

from __future__ import annotations

import functools

import jax
from absl import logging

_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "",
                "xla_cpu_prefer_vector_width": "512"}


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


def apply_tweaks() -> None:
  """What a run starting on this machine applies (`Training.cpu_tweaks`):
  the unrolled threefry lowering on CPU."""
  unroll_threefry()
