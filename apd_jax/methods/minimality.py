"""VPD's importance minimality: smooth-L0 activity plus a frequency penalty.

SPD penalises `Σ_c mean_b G_c^p` (`spd_objective.importance_minimality`).
VPD replaces it by two terms over the same per-subcomponent firing
frequencies. On the upper-leaky causal importances `ci [..., C_s]` of each
decomposed matrix `s`, with a width `γ` annealed over training,

.. math::  ψ_γ(ci) = \\frac{ci^2}{ci^2 + γ^2}, \\qquad
           f_{s,c} = \\frac{1}{N} Σ_n ψ_γ(ci_{n,s,c})

(`n` runs over the `N` examples, and positions for sequences), and

.. math::  activity = Σ_s Σ_c f_{s,c}, \\qquad
           freq = Σ_s Σ_c Φ(f_{s,c}), \\quad Φ(f) = f \\log_2(1 + a' f)

with `a'` a fixed reference count (e.g. the tokens of a batch). The loss
adds `imp_coeff · activity + freq_coeff · freq`.

Two rules make these terms correct, and the functions here keep them:
every frequency is a mean over the whole batch, formed before the
logarithm (a mean of per-example penalties differs: `Φ` is convex), so
these functions take the batch rather than one example; and frequencies
are grouped per matrix (a dict of matrices), never pooled across matrices.

Optionally, the frequency term is evaluated at a debiased exponential
moving average of `f` (`FrequencyEMA`): a single batch's `f` is a noisy
estimate, and the convex `Φ` turns that noise into a systematic
over-penalty of rare subcomponents.
"""

from __future__ import annotations

import math
from typing import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

GAMMA_START = 1.0   # smooth-L0 width at the start of training
GAMMA_END = 0.01    # ... and at its end


def annealed_gamma(progress: float | Array, start: float = GAMMA_START,
                   end: float = GAMMA_END) -> Array:
  """`γ(t) = (1 − t) start + t end` for the fraction `t ∈ [0, 1]` of
  training done (clipped to that range): exactly `start` at 0, `end` at
  1."""
  t = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  return (1.0 - t) * start + t * end


def smooth_l0(ci: Array, gamma: float | Array) -> Array:
  """`ψ_γ(ci) = ci² / (ci² + γ²)` elementwise (`γ > 0`): about 0 for
  `ci ≪ γ`, about 1 for `ci ≫ γ`."""
  sq = jnp.square(ci)
  return sq / (sq + jnp.square(gamma))


def _reduction_dtype(dtype) -> jnp.dtype:
  """At least float32 (bfloat16 importances are reduced in float32)."""
  return jnp.promote_types(dtype, jnp.float32)


def frequencies(ci: Array, gamma: float | Array) -> Array:
  """`f [C]`: the mean of `ψ_γ(ci)` over every axis of `ci [..., C]` but
  the last (examples and positions)."""
  ci = ci.astype(_reduction_dtype(ci.dtype))
  psi = smooth_l0(ci, gamma)
  return jnp.mean(psi.reshape(-1, psi.shape[-1]), axis=0)


def frequency_penalty(f: Array, reference_count: float | Array) -> Array:
  """`Φ(f) = f log₂(1 + a' f)` elementwise, `a'` the reference count."""
  return f * jnp.log2(1.0 + reference_count * f)


def frequency_penalty_slope(f: Array, reference_count: float | Array
                            ) -> Array:
  """`Φ'(f) = log₂(1 + a' f) + a' f / ((1 + a' f) ln 2)`."""
  af = reference_count * f
  return jnp.log2(1.0 + af) + af / ((1.0 + af) * math.log(2.0))


class Minimality(NamedTuple):
  """The two terms and the frequencies they were computed from."""
  activity: Array              # [] Σ_s Σ_c f_sc
  freq: Array                  # [] Σ_s Σ_c Φ(f_sc), on this batch's f
  f: dict[str, Array]          # matrix -> [C_s]


def minimality_terms(ci_upper: Mapping[str, Array], gamma: float | Array,
                     reference_count: float | Array) -> Minimality:
  """`activity` and `freq` (module docstring) for `{matrix: ci [..., C_s]}`.

  Args:
    ci_upper: per decomposed matrix, its upper-leaky causal importances on
      the whole batch (leading axes: examples, and positions if any).
    gamma: the smooth-L0 width `γ > 0` (`annealed_gamma`).
    reference_count: `a'` of the frequency term.
  """
  if not ci_upper:
    raise ValueError("minimality_terms needs at least one matrix")
  f = {name: frequencies(ci, gamma) for name, ci in ci_upper.items()}
  activity = sum(jnp.sum(v) for v in f.values())
  freq = sum(jnp.sum(frequency_penalty(v, reference_count))
             for v in f.values())
  return Minimality(activity=activity, freq=freq, f=f)


# -- the frequency term at a debiased moving average ---------------------------


class FrequencyEMA(NamedTuple):
  """A moving average of each matrix's frequencies `f [C_s]`."""
  count: Array                 # [] int32, updates so far
  ema: dict[str, Array]        # matrix -> [C_s] float32, not debiased


def decay_from_halflife(halflife_steps: float) -> float:
  """`β = 2^(−1/h)`: an update's weight halves every `h` updates."""
  if halflife_steps <= 0:
    raise ValueError(f"halflife_steps must be > 0, got {halflife_steps}")
  return 2.0 ** (-1.0 / halflife_steps)


def ema_init(n_components: Mapping[str, int]) -> FrequencyEMA:
  """Zero averages, no update yet."""
  return FrequencyEMA(
      count=jnp.zeros((), jnp.int32),
      ema={name: jnp.zeros((c,), jnp.float32)
           for name, c in n_components.items()})


def ema_update(state: FrequencyEMA, f: Mapping[str, Array],
               decay: float | Array) -> FrequencyEMA:
  """`ema ← β ema + (1 − β) sg(f)`: the state never carries a gradient."""
  f = jax.lax.stop_gradient(dict(f))
  if set(f) != set(state.ema):
    raise ValueError(f"frequencies for {sorted(f)}, averages for "
                     f"{sorted(state.ema)}")
  ema = {name: decay * m + (1.0 - decay) * f[name].astype(m.dtype)
         for name, m in state.ema.items()}
  return FrequencyEMA(count=state.count + 1, ema=ema)


def ema_debiased(state: FrequencyEMA, decay: float | Array
                 ) -> dict[str, Array]:
  """`f̂ = ema / (1 − β^t)` after `t ≥ 1` updates (Adam's bias correction):
  the first update's `f̂` is that update's `f` exactly."""
  scale = 1.0 / (1.0 - jnp.power(decay, state.count.astype(jnp.float32)))
  return {name: m * scale for name, m in state.ema.items()}


def ema_frequency_penalty(f: Mapping[str, Array], state: FrequencyEMA, *,
                          decay: float | Array,
                          reference_count: float | Array
                          ) -> tuple[Array, FrequencyEMA]:
  """`(freq, state')`: the frequency term at the debiased average.

  .. math::  freq = Σ_s Σ_c Φ(f̂_{s,c}) + sg(Φ'(f̂_{s,c}))
                    (f_{s,c} − sg(f_{s,c}))

  with `f̂` the debiased average after adding this batch's `f`. Its value is
  `Σ Φ(f̂)`; its gradient is `Φ'(f̂) ∂f/∂θ`, through this batch's `f` at full
  scale (differentiating `Φ(f̂)` itself would shrink it by `1 − β`). The
  average is stop-gradient: the causal-importance function cannot steer
  it.

  Args:
    f: this batch's frequencies (`Minimality.f`), live.
    state: the average before this batch.
    decay: `β` (`decay_from_halflife`).
    reference_count: `a'`.
  """
  state = ema_update(state, f, decay)
  f_hat = jax.lax.stop_gradient(ema_debiased(state, decay))
  freq = 0.0
  for name, v in f.items():
    slope = frequency_penalty_slope(f_hat[name], reference_count)
    live = v - jax.lax.stop_gradient(v)          # value 0, gradient ∂f
    freq = freq + jnp.sum(frequency_penalty(f_hat[name], reference_count)
                          + slope * live)
  return freq, state
