"""Parameter components as a pytree of low-rank factors.

For each decomposed leaf `l` of shape `[i, o]` the components hold
`U[l]: [C, i, m]` and `V[l]: [C, m, o]`; component `c`'s weight in that leaf is

.. math::  P_{c,l} = U_{l,c} V_{l,c},

and a mask `α ∈ R^C` gives the leaf's weight `W_l(α) = Σ_c α_c P_{c,l}`.
One mask spans every decomposed leaf: component `c` is the set `{P_{c,l}}_l`.
"""

from __future__ import annotations

from typing import Mapping

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class Components:
  """Low-rank factors of C components over the decomposed leaves."""
  U: dict[str, Array]  # leaf name -> [C, i, m]
  V: dict[str, Array]  # leaf name -> [C, m, o]

  @property
  def n_components(self) -> int:
    return next(iter(self.U.values())).shape[0]

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.U)


def default_rank(shape: tuple[int, int]) -> int:
  """The reference's full rank: `min(i, o)`."""
  return min(shape)


def init_random(key: Array, shapes: Mapping[str, tuple[int, int]], *,
                n_components: int, rank: Mapping[str, int],
                gain: float = 1.0) -> Components:
  """Xavier-normal factors, fans counted as PyTorch does for a 3-D tensor.

  For a factor of shape `[C, a, b]`, fan_in = a·b and fan_out = C·b, so

  .. math::  std(U) = gain \\sqrt{2 / (m (i + C))}, \\quad
             std(V) = gain \\sqrt{2 / (o (m + C))}.

  The components start small (far below the target's weights) and the
  faithfulness loss grows them into a sum equal to the target.
  """
  U, V = {}, {}
  for j, (name, (d_in, d_out)) in enumerate(shapes.items()):
    m = rank[name]
    ku, kv = jax.random.split(jax.random.fold_in(key, j))
    U[name] = _xavier(ku, (n_components, d_in, m), gain)
    V[name] = _xavier(kv, (n_components, m, d_out), gain)
  return Components(U=U, V=V)


def _xavier(key: Array, shape: tuple[int, int, int], gain: float) -> Array:
  c, a, b = shape
  std = gain * (2.0 / (a * b + c * b)) ** 0.5
  return std * jax.random.normal(key, shape)


def init_svd(key: Array, targets: Mapping[str, Array], *, n_components: int,
             rank: Mapping[str, int], noise: float = 1e-2) -> Components:
  """Components whose sum is exactly the target.

  The singular triplets `σ_r u_r v_rᵀ` of each target leaf are dealt out to the
  components in turn (triplet r goes to component `r mod C`, slot `r // C`),
  split as `U = u√σ`, `V = √σ vᵀ`. Unused slots get small random `U` and zero
  `V`, so they add nothing to the sum yet still receive gradients.

  Raises:
    ValueError: if `C·m` is smaller than a leaf's rank.
  """
  U, V = {}, {}
  for j, (name, w) in enumerate(targets.items()):
    m = rank[name]
    d_in, d_out = w.shape
    u, s, vt = jnp.linalg.svd(w, full_matrices=False)
    r = int(jnp.sum(s > s[0] * 1e-7)) if s.size and s[0] > 0 else 0
    if r > n_components * m:
      raise ValueError(
          f"init='svd' needs n_components*rank >= rank of {name} ({r}), got "
          f"{n_components}*{m}")
    Uc = noise * jax.random.normal(jax.random.fold_in(key, j),
                                   (n_components, d_in, m))
    Vc = jnp.zeros((n_components, m, d_out))
    for t in range(r):
      c, slot = t % n_components, t // n_components
      Uc = Uc.at[c, :, slot].set(u[:, t] * jnp.sqrt(s[t]))
      Vc = Vc.at[c, slot, :].set(vt[t] * jnp.sqrt(s[t]))
    U[name], V[name] = Uc, Vc
  return Components(U=U, V=V)


def component_weights(comps: Components) -> dict[str, Array]:
  """`P[l] = U[l] @ V[l]`: leaf name -> `[C, i, o]`."""
  return {n: jnp.einsum("cim,cmo->cio", comps.U[n], comps.V[n])
          for n in comps.names}


def masked_weights(P: Mapping[str, Array], mask: Array) -> dict[str, Array]:
  """`W_l(α) = Σ_c α_c P[c, l]` for one mask `α: [C]`."""
  return {n: jnp.tensordot(mask, p, axes=1) for n, p in P.items()}


def summed_weights(P: Mapping[str, Array]) -> dict[str, Array]:
  """`Σ_c P[c, l]`: the weights of the full decomposition."""
  return {n: p.sum(0) for n, p in P.items()}


def summed_from_factors(comps: Components) -> dict[str, Array]:
  """`Σ_c U[l]_c V[l]_c` without forming the C matrices."""
  return {n: jnp.einsum("cim,cmo->io", comps.U[n], comps.V[n])
          for n in comps.names}


def normalize_u(comps: Components) -> Components:
  """Each column `U[l][c, :, m]` rescaled to unit norm over `i`."""
  U = {n: u / jnp.linalg.norm(u, axis=1, keepdims=True)
       for n, u in comps.U.items()}
  return comps.replace(U=U)


def n_parameters(comps: Components) -> int:
  """N: the number of decomposed target parameters, `Σ_l i·o`."""
  return sum(u.shape[1] * comps.V[n].shape[2] for n, u in comps.U.items())
