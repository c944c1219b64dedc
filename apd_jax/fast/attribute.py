"""Gradient attributions of a target in factored form, in any of the modes.

.. math::  A_c^2 = \\sum_o \\Big(\\sum_k \\langle \\partial y_o / \\partial
           \\delta_k,\\; a_k U_c V_c \\rangle\\Big)^2

'forward' and 'reverse' are `factored.Model.attributions` (autodiff through
the factored jaxpr); 'lazy' is forward mode with the tangents kept as
per-example coefficients times bases shared by the batch (`tangents.py`).
This module is the one place that chooses between them, so `factored` and
`tangents` stay one above the other.
"""

from __future__ import annotations

from typing import Any
from typing import Mapping
from typing import Sequence

import jax

from apd_jax.fast import factored
from apd_jax.fast import tangents

Array = jax.Array
MODES = ("forward", "reverse", "lazy")


def attributions(model: factored.Model, base: Mapping[str, Array],
                 U: Mapping[str, Array], V: Mapping[str, Array], x: Array, *,
                 mode: str = "forward",
                 contract: str | Sequence[str] = "direct",
                 projections: int = 0, key: Array | None = None,
                 keep: int = 0) -> tuple[Array, Any]:
  """`(A² [C], forward(base, x))` for one example `x`, at the weights
  `base`; `contract` and `projections` as for `factored.Model.attributions`
  (reverse mode only), and `keep = 1` for `A² [T, C]`, the attributions
  of the outputs at each position (forward and reverse mode)."""
  if mode == "lazy":
    if projections or keep:
      raise ValueError("projections and attributions per position need "
                       "mode 'forward' or 'reverse', not 'lazy'")
    return tangents.attributions(model, base, U, V, x)
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  return model.attributions(base, U, V, x, mode=mode, contract=contract,
                            projections=projections, key=key, keep=keep)
