"""Per-example attributions of the output to each component.

All functions here act on ONE example; `jax.vmap` supplies the batch. The model
enters as `forward(weights, x) -> y`, the target's apply function with the
decomposed leaves replaced by `weights` (a dict leaf name -> `[i, o]`); the
output's d_out entries may have any shape.

Gradient attribution (the paper's default) is the squared norm of the output's
directional derivative along each component at a base point `W0`,

.. math::  A_c(x)^2 = Σ_o \\Big( Σ_l ⟨∂f_o/∂W_l (x; W0), P_{c,l}⟩ \\Big)^2,

i.e. the squared column norms of the Jacobian of
`β ↦ f(x; W0 + Σ_c β_c P_c)` at `β = 0`. Forward mode pushes C tangents,
reverse mode pulls d_out cotangents; `choose_mode` picks the cheaper one from
XLA's cost analysis (a mode that fails to compile is logged, never chosen),
so no Python loop over outputs or components remains.
`gradient` forms the component weights; training uses the factored form of
the same quantity (`factored.Model.attributions`), which never does.
"""

from __future__ import annotations

from typing import Any
from typing import Callable
from typing import Mapping

import jax
import jax.numpy as jnp
from absl import logging

from apd_jax.core import components as comp_lib

Array = jax.Array
Forward = Callable[[Mapping[str, Array], Array], Array]


def gradient(forward: Forward, base: Mapping[str, Array],
             P: Mapping[str, Array], x: Array, *,
             mode: str = "forward") -> Array:
  """`A_c(x)²` for one example: `[C]` (see module docstring)."""
  n_components = next(iter(P.values())).shape[0]

  def along(beta):
    delta = comp_lib.masked_weights(P, beta)
    return forward({n: base[n] + delta[n] for n in base}, x)

  jac = jax.jacfwd if mode == "forward" else jax.jacrev
  J = jac(along)(jnp.zeros((n_components,), next(iter(P.values())).dtype))
  return jnp.sum(J.reshape(-1, n_components) ** 2, axis=0)  # J: [d_out, C]


def ablation(forward: Forward, P: Mapping[str, Array], x: Array) -> Array:
  """`mean_o (f(x; Σ P) − f(x; Σ_{c'≠c} P))²` for one example: `[C]`."""
  n_components = next(iter(P.values())).shape[0]
  full = forward(comp_lib.summed_weights(P), x)

  def without(c):
    mask = 1.0 - jax.nn.one_hot(c, n_components)
    return jnp.mean((full - forward(comp_lib.masked_weights(P, mask), x)) ** 2)

  return jax.vmap(without)(jnp.arange(n_components))


def activation(layer_inputs: Mapping[str, Array],
               P: Mapping[str, Array]) -> Array:
  """`Σ_l ||a_l P[c, l]||²` for one example (`a_l`: leaf l's input): `[C]`."""
  total = 0.0
  for name, p in P.items():
    total = total + jnp.sum(
        jnp.einsum("i,cio->co", layer_inputs[name], p) ** 2, axis=-1)
  return total


def flops(fn: Callable[..., Any], *args) -> float:
  """XLA's flop estimate for `jit(fn)(*args)` (lowered only, never run);
  infinity where XLA gives none. An error tracing or lowering `fn`
  propagates: a way of computing that fails is not a costly one."""
  cost = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("inf")))


def try_flops(label: str, failures: dict[str, Exception],
              fn: Callable[..., Any], *args) -> float:
  """`flops(fn, *args)`, or infinity if `fn` fails to lower: its error is
  logged (absl, a warning naming `label`) and kept in `failures[label]`
  for `check_some_work`."""
  try:
    return flops(fn, *args)
  except Exception as e:  # noqa: BLE001 - logged, kept, raised if none works
    failures[label] = e
    logging.warning("attributions in %s fail to compile, so that way is not "
                    "chosen: %s: %s", label, type(e).__name__, e)
    return float("inf")


def check_some_work(failures: dict[str, Exception], tried: int) -> None:
  """Raises `ValueError` naming each way and its error (the last one its
  cause) if all `tried` ways of computing the attributions failed
  (`try_flops`)."""
  if failures and len(failures) >= tried:
    lines = "; ".join(f"{k}: {type(e).__name__}: "
                      f"{(str(e).splitlines() or [''])[0]}"
                      for k, e in failures.items())
    raise ValueError(f"no way of computing the attributions compiles: "
                     f"{lines}") from list(failures.values())[-1]


def choose_mode(batched: Callable[[str], Callable[..., Array]],
                *args) -> str:
  """'forward' or 'reverse', whichever XLA's cost analysis says is cheaper;
  a mode that fails to compile is logged and not chosen.

  Args:
    batched: maps a mode to a function computing the batch's attributions in
      that mode; it is only lowered on `args`, never run.
    *args: its arguments, arrays or `jax.ShapeDtypeStruct`s.

  Raises:
    ValueError: if neither mode compiles, with each one's error.
  """
  failures: dict[str, Exception] = {}
  cost = {mode: try_flops(f"{mode} mode", failures, batched(mode), *args)
          for mode in ("forward", "reverse")}
  check_some_work(failures, len(cost))
  working = {m: c for m, c in cost.items() if f"{m} mode" not in failures}
  return min(working, key=working.get)  # ties (no estimate): 'forward'
