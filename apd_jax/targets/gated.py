r"""Hand-coded gated functions: control bits switch piecewise-linear MLPs on.

The target of the APD paper's appendix (Braun et al. 2025): a residual MLP,
built rather than trained, whose input is a scalar `x` and `n` control bits,
and whose output is the sum of the functions whose bits are on,

.. math::  ŷ(x, s) = \sum_i s_i \, \hat F_i(x),
           \quad F_i(x) = a_i \cos(b_i x + c_i) + d_i \sin(e_i x + f_i) + g_i,

where `F̂_i` is the linear interpolant of `F_i` at `m` equally spaced knots
`t_k = x_min + k δ`, `δ = (x_max − x_min) / (m − 1)`, written as a sum of `m`
ReLU neurons `F̂_i(x) = Σ_j w_ij ReLU(x − t_{j−1})` (the first kink, `t_{−1}`,
lies one spacing below `x_min`, where `F̂_i` starts from 0).

Residual stream (`d_resid = n + 2`): dimension 0 carries `x`, dimensions
`1 … n` the control bits, the last one the output `y`, which `W_U` reads.
Each neuron of function `i` reads `x` with weight 1 and bit `i` with weight
`S` (the suppression), and its bias is `−t_{j−1} − S`: with the bit off its
pre-activation is at most `x_max − x_min + δ − S < 0`, so it never fires; with
the bit on it is `x − t_{j−1}`. (With `simple_bias`, the bias is `−S` and the
bit's weight `S − t_{j−1}`, which puts the kinks into `W_in`.) Every neuron
writes only to `y`, so no layer reads another's output. The `n · m` neurons
are shuffled and dealt evenly to the `n_layers` MLPs; `neuron_functions`
recovers the function each neuron belongs to from its weights.

`W_in`, `W_out` are what APD decomposes; `W_E`, `W_U` and the biases stay
fixed. Its ideal decomposition has one component per function. Data: `x ~
U[x_min, x_max]`, each bit on independently with probability p; the input is
`[x, s_1, …, s_n]`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from apd_jax.analysis import features
from apd_jax.analysis import plotting

Array = jax.Array


def make_functions(key: Array, n_functions: int) -> Array:
  """Random coefficients `[n_functions, 7]`, columns `(a, b, c, d, e, f, g)`.

  `a, d, g ~ U[−1, 1]` (amplitudes, offset), `b, e ~ U[0.1, 1]` (frequencies),
  `c, f ~ U[−π, π]` (phases), as in the APD reference code. (The reference
  code puts the sine first and the cosine second; with these ranges both
  orders draw the same family of functions.)
  """
  low = jnp.array([-1.0, 0.1, -jnp.pi, -1.0, 0.1, -jnp.pi, -1.0])
  high = jnp.array([1.0, 1.0, jnp.pi, 1.0, 1.0, jnp.pi, 1.0])
  return jax.random.uniform(key, (n_functions, 7), minval=low, maxval=high)


def functions(coeffs: Array, x: Array) -> Array:
  """`F_i(x)` for every function: `x [...]` -> `[..., n_functions]`."""
  a, b, c, d, e, f, g = (coeffs[:, k] for k in range(7))
  x = x[..., None]
  return a * jnp.cos(b * x + c) + d * jnp.sin(e * x + f) + g


def knots(neurons_per_function: int, range_min: float = 0.0,
          range_max: float = 5.0) -> Array:
  """The `m` interpolation knots `t_k = x_min + k δ`: `[m]`."""
  return jnp.linspace(range_min, range_max, neurons_per_function)


def interpolant(coeffs: Array, x: Array, *, neurons_per_function: int,
                range_min: float = 0.0, range_max: float = 5.0) -> Array:
  """`F̂_i(x)`, the linear interpolant at the knots, for `x` in range:
  `[...]` -> `[..., n_functions]`."""
  t = knots(neurons_per_function, range_min, range_max)
  values = functions(coeffs, t)                       # [m, n]
  return jax.vmap(lambda v: jnp.interp(x, t, v), out_axes=-1)(values.T)


def error_bound(coeffs: Array, *, neurons_per_function: int,
                range_min: float = 0.0, range_max: float = 5.0) -> Array:
  """`max |F̂_i − F_i|` on the range is at most `δ²/8 · max|F_i''|`, and
  `|F_i''| ≤ |a_i| b_i² + |d_i| e_i²`: `[n_functions]`."""
  a, b, _, d, e, _, _ = (coeffs[:, k] for k in range(7))
  delta = (range_max - range_min) / (neurons_per_function - 1)
  return delta ** 2 / 8 * (jnp.abs(a) * b ** 2 + jnp.abs(d) * e ** 2)


def init(key: Array, *, n_functions: int = 4, neurons_per_function: int = 10,
         n_layers: int = 2, range_min: float = 0.0, range_max: float = 5.0,
         suppression: float | None = None, simple_bias: bool = False,
         coeffs: Array | None = None) -> dict:
  """Builds the gated model; its functions are `make_functions(key, n)`
  unless `coeffs` are given.

  Args:
    key: draws the functions (if not given) and the neurons' layer split.
    suppression: `S`, default `2 (x_max − x_min)`; must exceed
      `x_max − x_min + δ` (with `simple_bias`: `x_max`).

  Returns:
    `{"W_E": [n+1, n+2], "W_U": [n+2, 1], "layers": [{"W_in": [n+2, d_mlp],
    "b_in": [d_mlp], "W_out": [d_mlp, n+2]}, ...]}`, `d_mlp = n m / n_layers`.
  """
  n, m = n_functions, neurons_per_function
  if m < 2:
    raise ValueError(f"neurons_per_function must be >= 2, got {m}")
  if (n * m) % n_layers:
    raise ValueError(f"{n * m} neurons do not split over {n_layers} layers")
  if not range_max > range_min:
    raise ValueError(f"need range_min < range_max, got {range_min}, "
                     f"{range_max}")
  if coeffs is None:
    coeffs = make_functions(key, n)
  if coeffs.shape != (n, 7):
    raise ValueError(f"coeffs must be [{n}, 7], got {coeffs.shape}")
  delta = (range_max - range_min) / (m - 1)
  S = 2.0 * (range_max - range_min) if suppression is None else suppression
  needed = range_max if simple_bias else range_max - range_min + delta
  if not S > needed:
    raise ValueError(f"suppression {S} must exceed {needed} to keep neurons "
                     f"off when their bit is off")
  return _build(key, jnp.asarray(coeffs), neurons_per_function=m,
                n_layers=n_layers, range_min=float(range_min),
                range_max=float(range_max), suppression=float(S),
                simple_bias=bool(simple_bias))


@functools.partial(jax.jit, static_argnames=(
    "neurons_per_function", "n_layers", "range_min", "range_max",
    "suppression", "simple_bias"))
def _build(key, coeffs, *, neurons_per_function, n_layers, range_min,
           range_max, suppression, simple_bias):
  """`init`'s weights, compiled once rather than built op by op."""
  n, m, S = coeffs.shape[0], neurons_per_function, suppression
  delta = (range_max - range_min) / (m - 1)
  # All n·m neurons, function-major: neuron i·m + j has its kink at t_{j−1}.
  t = knots(m, range_min, range_max)
  kink = jnp.tile(t - delta, n)                               # [n m]
  values = jnp.concatenate([jnp.zeros((n, 1)), functions(coeffs, t).T], 1)
  slopes = jnp.diff(values, axis=1) / delta                   # [n, m]
  w_out = jnp.diff(slopes, axis=1, prepend=0.0).reshape(-1)   # [n m]
  fn = jnp.repeat(jnp.arange(n), m)                           # [n m]
  d = n + 2
  W_in = jnp.zeros((d, n * m)).at[0].set(1.0)
  bit_weight = S - kink if simple_bias else jnp.full((n * m,), S)
  W_in = W_in.at[1 + fn, jnp.arange(n * m)].set(bit_weight)
  b_in = jnp.full((n * m,), -S) if simple_bias else -kink - S
  W_out = jnp.zeros((n * m, d)).at[:, -1].set(w_out)

  order = jax.random.permutation(jax.random.fold_in(key, 1), n * m)
  layers = [{"W_in": W_in[:, idx], "b_in": b_in[idx], "W_out": W_out[idx]}
            for idx in jnp.split(order, n_layers)]
  W_E = jnp.eye(n + 1, d)
  W_U = jnp.zeros((d, 1)).at[-1, 0].set(1.0)
  return {"W_E": W_E, "W_U": W_U, "layers": layers}


def neuron_functions(params: dict) -> list[Array]:
  """Per layer, the function each neuron serves (the bit it reads): `[d_mlp]`
  int arrays."""
  n = params["W_E"].shape[0] - 1
  return [jnp.argmax(jnp.abs(layer["W_in"][1:1 + n]), axis=0)
          for layer in params["layers"]]


def apply(params: dict, x: Array) -> tuple[Array, dict[str, Array]]:
  """`(ŷ [B, 1], activations)` for a batch `x [B, 1 + n_functions]`.

  .. math::  h_0 = x W_E, \\quad h_{l+1} = h_l + ReLU(h_l W^{in}_l + b_l)
             W^{out}_l, \\quad ŷ = h_L W_U
  """
  h = x @ params["W_E"]
  acts = {}
  for j, layer in enumerate(params["layers"]):
    mid = jax.nn.relu(h @ layer["W_in"] + layer["b_in"])
    acts[f"['layers'][{j}]['W_in']"] = h
    acts[f"['layers'][{j}]['W_out']"] = mid
    acts[f"post_relu_{j}"] = mid
    h = h + mid @ layer["W_out"]
  return h @ params["W_U"], acts


def output(params: dict, x: Array) -> Array:
  """`ŷ` alone."""
  return apply(params, x)[0]


def target_fn(x: Array, coeffs: Array) -> Array:
  """The ideal output `Σ_i s_i F_i(x)` for inputs `[B, 1 + n]`: `[B, 1]`."""
  return jnp.sum(x[:, 1:] * functions(coeffs, x[:, 0]), -1, keepdims=True)


def sample(key: Array, batch_size: int, *, n_functions: int,
           feature_probability: float = 0.05, range_min: float = 0.0,
           range_max: float = 5.0) -> Array:
  """Inputs `[x, s_1 … s_n]`: `x ~ U[x_min, x_max]`, `s_i ~ Bernoulli(p)`:
  `[B, 1 + n]`."""
  k_x, k_s = jax.random.split(key)
  x = jax.random.uniform(k_x, (batch_size, 1), minval=range_min,
                         maxval=range_max)
  bits = jax.random.bernoulli(k_s, feature_probability,
                              (batch_size, n_functions))
  return jnp.concatenate([x, bits.astype(x.dtype)], axis=1)


def sampler(*, n_functions: int, feature_probability: float = 0.05,
            range_min: float = 0.0, range_max: float = 5.0):
  """`sample_fn(key, batch_size)` for `decompose`."""
  return functools.partial(sample, n_functions=n_functions,
                           feature_probability=feature_probability,
                           range_min=range_min, range_max=range_max)


def make(t: Any, seed: int):
  """`(apply_fn, params, sample_fn)` from a config's `target` ConfigDict.

  Reads `n_functions`, `neurons_per_function`, `n_layers`, `range_min`,
  `range_max`, `suppression` (None: the default), `simple_bias` and
  `feature_probability`. The functions are
  `make_functions(jax.random.PRNGKey(seed), n_functions)`. `apply_fn` returns
  `ŷ` only; `apply` (with `has_aux=True`) also returns the activations.
  """
  return output, build(t, seed)[0], sampler(**{k: t[k] for k in SAMPLER})



# -- as a command-line target (`config.target.name = "gated"`) ----------------

HAS_AUX = False                 # `output`; `apply` returns the activations
METRICS = ("mean_function_recovery",)
SELECT = ("mean_function_recovery", "max")
SUCCESS = None
ARCH = ("n_functions", "neurons_per_function", "n_layers", "range_min",
        "range_max", "suppression", "simple_bias")


def build(t, seed: int) -> tuple[dict, None]:
  """Built, not trained: the functions are `make_functions(PRNGKey(seed))`."""
  return init(jax.random.PRNGKey(seed), **{k: t[k] for k in ARCH}), None


SAMPLER = ("n_functions", "feature_probability", "range_min", "range_max")
APPLY = "output"


def report(result, sample_fn, workdir: str, *, figures: bool = True,
           **_) -> dict:
  """Per-function recovery (`features.function_recovery`) and the figure of
  each component's neurons coloured by function; for SPD, per matrix the
  best subcomponent's cosine with the function's part, and its minimum
  over the matrices as the function's recovery. `figures=False` writes no
  PNG."""
  del sample_fn
  fns = neuron_functions(result.target.params)
  P = result.component_weights
  if all(len(leaves) == 1 for leaves in result.groups.values()):
    # each group of components belongs to one matrix (SPD)
    per_leaf = features.function_recovery_per_leaf(result.target.weights, P,
                                                   fns)
    best = np.asarray(jnp.min(per_leaf, axis=1))
    return dict(function_recovery=[float(v) for v in best],
                mean_function_recovery=float(best.mean()),
                function_recovery_per_matrix=np.asarray(per_leaf).tolist())
  scores = features.function_recovery(result.target.weights, P, fns)
  best = np.asarray(jnp.max(scores, axis=1))
  if figures:
    plotting.plot_function_components(
        features.neuron_norms(P, len(fns)), np.concatenate(fns), scores,
        os.path.join(workdir, "components.png"))
  return dict(function_recovery=[float(v) for v in best],
              mean_function_recovery=float(best.mean()),
              best_component_per_function=[
                  int(c) for c in np.asarray(jnp.argmax(scores, axis=1))])
