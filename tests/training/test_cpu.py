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

