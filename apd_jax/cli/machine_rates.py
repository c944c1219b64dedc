"""This machine's rates, and the fastest a step could run at them.

    rates = machine()        # {matmul_gflops, transcendentals_g_per_s,
                             #  stream_gb_per_s}, measured now
    limit(row, rates)        # a step's lower-bound time and its fraction

The rates are measured on the default device the way the steps run (JAX,
float32, jitted): dense matmul, exponentials and erf in cache, streaming
from memory. `limit` puts a step's XLA cost analysis against them.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def _seconds(f, x, min_s: float = 0.2) -> tuple[int, float]:
  """`(reps, seconds)` of `f(x, reps)` (compiled first), with reps grown
  until one call takes at least `min_s`."""
  jax.block_until_ready(f(x, 1))
  reps = 1
  while True:
    t = time.perf_counter()
    jax.block_until_ready(f(x, reps))
    dt = time.perf_counter() - t
    if dt >= min_s or reps >= 1 << 24:
      return reps, dt
    reps *= 2 if dt > min_s / 8 else 8


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def matmul_gflops(n: int | None = None, reps: int | None = None) -> float:
  """Dense f32 `n×n @ n×n` throughput of the default device (n: 2048 on
  CPU, 8192 on an accelerator), at JAX's default precision (as the steps
  run; TF32 on recent NVIDIA GPUs)."""
  n = n or (2048 if _on_cpu() else 8192)
  reps = reps or (10 if _on_cpu() else 20)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def transcendental_rate(n: int | None = None, depths=(2, 4, 16),
                        min_s: float = 0.2) -> float:
  """G transcendental ops/s in cache: `exp` and `erf` (SPD's GELU)
  alternately, a chain of `depth` per element and pass, over an f32 array
  that fits in L2 (n: 32k elements, 128 KiB, on CPU; 4M, 16 MiB, on an
  accelerator). The best rate of the `depths`: short chains pay for the
  loads and stores, and on XLA:CPU long ones ran up to 3x slower per op."""
  n = n or (1 << 15 if _on_cpu() else 1 << 22)
  x = jnp.linspace(0.0, 1.0, n)
  best = 0.0
  for depth in depths:
    def body(_, x, depth=depth):
      for j in range(depth):
        x = jax.lax.erf(x) if j % 2 else jnp.exp(-x)
      return x

    f = jax.jit(lambda x, reps, body=body: jax.lax.fori_loop(0, reps, body,
                                                             x))
    reps, dt = _seconds(f, x, min_s)
    best = max(best, n * depth * reps / dt / 1e9)
  return best


def stream_gbps(n: int | None = None, min_s: float = 0.2) -> float:
  """GB/s of `x ← x / 2 + 1` over an f32 array larger than the caches (n:
  2^24 elements, 64 MiB, on CPU; 2^28, 1 GiB, on an accelerator): 8 bytes
  read and written per element and pass."""
  n = n or (1 << 24 if _on_cpu() else 1 << 28)
  f = jax.jit(lambda x, reps: jax.lax.fori_loop(
      0, reps, lambda _, x: x * 0.5 + 1.0, x))
  reps, dt = _seconds(f, jnp.zeros((n,), jnp.float32), min_s)
  return 8 * n * reps / dt / 1e9


def machine(quick: bool = False) -> dict:
  """This device's rates: dense matmul GFLOP/s, G transcendentals/s (in
  cache) and streaming GB/s (`quick`: short measurements, less exact)."""
  if quick:
    return dict(matmul_gflops=matmul_gflops(512, 5),
                transcendentals_g_per_s=transcendental_rate(min_s=0.05),
                stream_gb_per_s=stream_gbps(1 << 20, 0.05))
  return dict(matmul_gflops=matmul_gflops(),
              transcendentals_g_per_s=transcendental_rate(),
              stream_gb_per_s=stream_gbps())


def limit(row: dict, rates: dict) -> dict:
  """The step's lower-bound time on this machine, and the fraction of it
  that the measured step reaches.

  .. math::  t_{limit} = \\frac{FLOPs}{matmul\\ rate}
                       + \\frac{transcendentals}{transcendental\\ rate}

  with XLA's counts of the step and the machine's rates: no FLOP runs
  faster than a dense matmul's (elementwise ones run slower), no
  transcendental faster than in cache, and on a CPU the same vector units
  do both. Memory traffic is left out, so the bound is optimistic (a GPU's
  tensor cores also run beside its other units, where the larger term alone
  is the strict bound; both terms are in the row). `stream_s`, XLA's bytes
  accessed at the streaming rate, is shown beside it: XLA counts every
  fused kernel's reads and writes, cached or not, so it overstates.
  """
  matmul_s = row["gflop_per_step"] / rates["matmul_gflops"]
  transcendental_s = (row["gtranscendentals_per_step"]
                      / rates["transcendentals_g_per_s"])
  limit_s = matmul_s + transcendental_s
  return dict(matmul_s=matmul_s, transcendental_s=transcendental_s,
              limit_s=limit_s, limit_fraction=limit_s / row["step_s"],
              stream_s=row["gbytes_per_step"] / rates["stream_gb_per_s"],
              matmul_fraction=row["gflops"] / rates["matmul_gflops"])
