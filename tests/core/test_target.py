"""`target.check_finite`: every floating leaf, named when NaN or inf."""

import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax.core import target


def test_finite_params_and_integer_leaves_pass():
  target.check_finite({"W": jnp.ones((2, 3)), "ids": jnp.arange(4),
                       "scale": 1.0, "h": jnp.ones(2, jnp.bfloat16)})


def test_every_non_finite_leaf_is_named_with_its_counts():
  params = {"W": jnp.array([[np.nan, 1.0], [np.inf, np.nan]]),
            "mlp": {"b": jnp.array([-np.inf], jnp.bfloat16),
                    "ok": np.zeros(3, np.float32)},
            "scale": float("nan")}
  with pytest.raises(ValueError) as e:
    target.check_finite(params)
  message = str(e.value)
  assert "['W'] (2, 2): 2 nan, 1 inf of 4" in message
  assert "['mlp']['b'] (1,): 0 nan, 1 inf of 1" in message
  assert "['scale'] (): 1 nan, 0 inf of 1" in message
  assert "['ok']" not in message
