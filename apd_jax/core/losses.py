"""APD's loss terms, free of configuration.

Shapes: `B` batch, `C` components, `m` rank, `i`/`o` a leaf's in/out size,
N the number of decomposed target parameters. Reference: Braun et al. (2025),
"Attribution-based Parameter Decomposition", §2 and appendix.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from apd_jax.core import chunked

Array = jax.Array
EPS = 1e-16


def faithfulness(target: Mapping[str, Array],
                 summed: Mapping[str, Array]) -> Array:
  """Mean squared difference between target and summed components.

  .. math::  L_{faith} = \\frac{1}{N} Σ_l ||θ^*_l − Σ_c P_{c,l}||_F^2
  """
  n = sum(w.size for w in target.values())
  sq = sum(jnp.sum((target[k] - summed[k]) ** 2) for k in target)
  return sq / n


def mse(target_out: Array, out: Array) -> Array:
  """Top-k reconstruction, MSE over batch and outputs.

  .. math::  L_{min} = \\frac{1}{B·d} Σ_{b,o} (f_o(x_b; θ^*) − f_o(x_b; W(s)))^2
  """
  return jnp.mean((target_out - out) ** 2)


def kl_rows(target_logits: Array, logits: Array, *,
            chunk: int | None = None) -> Array:
  """Per-example KL divergence of the softmaxes, unreduced: `[...]`.

  .. math::  KL_b = Σ_v p_{bv} (\\log p_{bv} − \\log q_{bv}),
      \\quad p = σ(f(x_b; θ^*)),\\ q = σ(f(x_b; W(s)))

  The last axis holds the classes; every other axis counts as batch. The
  rows are computed `chunk` at a time (`chunked.map_rows`; None: rows of
  about 2^22 logits), so no copy of the logits' size is kept in the forward
  or backward pass.
  """
  lead, v = target_logits.shape[:-1], target_logits.shape[-1]
  per = chunked.map_rows(_kl, target_logits.reshape(-1, v),
                         logits.reshape(-1, v), chunk=chunk)
  return per.reshape(lead)


def _kl(target_logits: Array, logits: Array) -> Array:
  logp = jax.nn.log_softmax(target_logits, axis=-1)
  logq = jax.nn.log_softmax(logits, axis=-1)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def kl(target_logits: Array, logits: Array, *,
       chunk: int | None = None) -> Array:
  """Top-k reconstruction for logit outputs, mean over the batch.

  .. math::  L_{min} = \\frac{1}{B} Σ_b KL(σ(f(x_b; θ^*)) ‖ σ(f(x_b; W(s))))

  with σ the softmax. The last axis holds the classes; every other axis
  counts as batch; computed `chunk` rows at a time (`kl_rows`).
  """
  return jnp.mean(kl_rows(target_logits, logits, chunk=chunk))


def cross_entropy_rows(logits: Array, labels: Array, *,
                       chunk: int | None = None) -> Array:
  """Per-example cross-entropy (nats) of integer `labels`, unreduced.

  .. math::  CE_b = −\\log σ(f(x_b))_{y_b}

  `logits [..., V]`, `labels [...]`; computed `chunk` rows at a time, as
  `kl_rows`.
  """
  lead, v = logits.shape[:-1], logits.shape[-1]
  per = chunked.map_rows(_cross_entropy, logits.reshape(-1, v),
                         labels.reshape(-1), chunk=chunk)
  return per.reshape(lead)


def _cross_entropy(logits: Array, labels: Array) -> Array:
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def hidden_activations(target_acts: Mapping[str, Array],
                       acts: Mapping[str, Array]) -> Array:
  """Hidden-activation reconstruction, summed over layers, per dimension.

  .. math::  L_{act} = \\frac{1}{B} Σ_b
      \\frac{Σ_h ||a_h(x_b; θ^*) − a_h(x_b; W(s))||^2}{Σ_h \\dim a_h}

  Each activation is `[B, ...]`.
  """
  dims = sum(a[0].size for a in target_acts.values())
  sq = sum(jnp.sum((target_acts[k] - acts[k]) ** 2) for k in target_acts)
  batch = next(iter(target_acts.values())).shape[0]
  return sq / (dims * batch)


def schatten_per_component(U: Mapping[str, Array], V: Mapping[str, Array],
                           p: float) -> Array:
  """Each component's Schatten-p term from its factors: `[C]`.

  .. math::  S_c = Σ_l Σ_m (||U_{l}[c,:,m]||^2 ||V_{l}[c,m,:]||^2 + ε)^{p/2}

  For a rank-1 component this is σ^p, σ its one singular value.
  """
  total = 0.0
  for name in U:
    u2 = jnp.sum(U[name] ** 2, axis=1)  # [C, m]
    v2 = jnp.sum(V[name] ** 2, axis=2)  # [C, m]
    total = total + jnp.sum((u2 * v2 + EPS) ** (p / 2), axis=-1)
  return total


def simplicity(U: Mapping[str, Array], V: Mapping[str, Array], mask: Array,
               p: float, n_params: int) -> Array:
  """Schatten-p norm of the active components, from factors (no SVD).

  .. math::  L_{simp} = \\frac{1}{N·B} Σ_b Σ_c s_c(x_b) S_c

  `mask [B, C]` is the top-k mask (or, in the L_p variant, the attribution
  weights).
  """
  per = schatten_per_component(U, V, p)
  return jnp.sum(mask * per[None, :]) / (n_params * mask.shape[0])


def lp_sparsity(attributions: Array, d_out: int, p: float) -> Array:
  """The L_p minimality variant on squared attributions `[B, C]`.

  .. math::  L_{min} = \\frac{1}{B} Σ_b Σ_c |A_c(x_b)^2 / d_{out}|^{p/2}
  """
  return jnp.mean(jnp.sum(lp_weights(attributions, d_out, p), axis=-1))


def lp_weights(attributions: Array, d_out: int, p: float) -> Array:
  """`|A_c(x)² / d_out|^{p/2}`: `[B, C]`, the L_p variant's soft mask."""
  return (jnp.abs(attributions) / d_out + EPS) ** (p / 2)
