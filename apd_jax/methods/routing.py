"""Subset routing: which decomposed matrices run their masked path.

VPD's stochastic reconstruction term replaces SPD's two (every matrix
masked; one matrix masked at a time) by one forward in which each example
(each position, for sequences) masks a random subset of the `S` decomposed
matrices and runs the others at the target's weights:

.. math::  k \\sim U\\{1, …, S\\}, \\qquad
           R \\sim U\\{R ⊆ \\{1, …, S\\} : |R| = k\\}

A matrix carries a (C+1)-th channel for the residual `Δ = W − Σ_c u_c v_cᵀ`,
so its masked path is

.. math::  y = Σ_c m_c (x · u_c) v_cᵀ + m_Δ \\, x Δ, \\qquad
           m_c = ci_c + (1 − ci_c) r_c, \\quad m_Δ = r_Δ

for sources `r ∈ [0, 1]^{C+1}`. With every `m_c = 1` and `m_Δ = 1` that
path is `x W` in exact arithmetic, so a routing is one set of coefficients
per matrix (`routed_coefficients`): the masks where the matrix is routed,
1 elsewhere.
"""

from __future__ import annotations

from typing import Any
from typing import Callable
from typing import Mapping
from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def uniform_k_subsets(key: Array, batch_shape: Sequence[int], n: int
                      ) -> Array:
  """`selected [*batch_shape, n]` (bool): per entry of `batch_shape`,
  independently, `k ~ U{1..n}` and a uniform `k`-subset of the `n`
  matrices (True = masked path). `batch_shape=()` draws for one example.

  The subset is the first `k` of a uniform random ordering of the matrices
  (the ranks of `n` i.i.d. uniforms), so exactly `k` entries are True.
  """
  if n < 1:
    raise ValueError(f"routing needs at least one matrix, got n={n}")
  batch_shape = tuple(batch_shape)

  def draw(key):
    k_key, order_key = jax.random.split(key)
    k = jax.random.randint(k_key, batch_shape, 1, n + 1)
    u = jax.random.uniform(order_key, (*batch_shape, n))
    ranks = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
    return ranks < k[..., None]

  return drawn_once(draw, key)


def split_routes(selected: Array, names: Sequence[str]) -> dict[str, Array]:
  """`{name: selected[..., j]}` for the matrices in the order of `names`
  (the order the selection was drawn for)."""
  if selected.shape[-1] != len(names):
    raise ValueError(f"a selection over {selected.shape[-1]} matrices for "
                     f"{len(names)} names")
  return {name: selected[..., j] for j, name in enumerate(names)}


def subset_routing(key: Array, batch_shape: Sequence[int],
                   names: Sequence[str]) -> dict[str, Array]:
  """`{name: routed [*batch_shape]}`: `uniform_k_subsets` over `names`."""
  return split_routes(uniform_k_subsets(key, batch_shape, len(names)),
                      names)


def masks_from_sources(ci: Array, source: Array) -> tuple[Array, Array]:
  """`(m [..., C], m_Δ [...])` from importances `ci [..., C]` and sources
  `r [..., C+1]` in [0, 1].

  .. math::  m_c = ci_c + (1 − ci_c) r_c, \\qquad m_Δ = r_{C}

  The Δ channel takes its source as is (it has no importance)."""
  c = ci.shape[-1]
  if source.shape[-1] != c + 1:
    raise ValueError(f"sources need C+1 = {c + 1} channels, got "
                     f"{source.shape[-1]}")
  return ci + (1.0 - ci) * source[..., :c], source[..., c]


def routed_coefficients(routes: Mapping[str, Array],
                        masks: Mapping[str, Array],
                        delta_masks: Mapping[str, Array]
                        ) -> tuple[dict[str, Array], dict[str, Array]]:
  """Per matrix, the coefficients of its masked path under a routing.

  .. math::  coef = \\mathrm{where}(routed, m, 1), \\qquad
             coef_Δ = \\mathrm{where}(routed, m_Δ, 1)

  A matrix that is not routed keeps every component and its Δ at 1, which
  is its frozen weight `W`.

  Args:
    routes: `{name: routed [*batch]}` (bool).
    masks: `{name: m [*batch, C]}`.
    delta_masks: `{name: m_Δ [*batch]}`.

  Returns:
    `({name: coef [*batch, C]}, {name: coef_Δ [*batch]})`.
  """
  if not set(routes) == set(masks) == set(delta_masks):
    raise ValueError(f"routes for {sorted(routes)}, masks for "
                     f"{sorted(masks)}, Δ masks for {sorted(delta_masks)}")
  coefs, delta_coefs = {}, {}
  for name, routed in routes.items():
    m, md = masks[name], delta_masks[name]
    coefs[name] = jnp.where(routed[..., None], m, jnp.ones_like(m))
    delta_coefs[name] = jnp.where(routed, md, jnp.ones_like(md))
  return coefs, delta_coefs


def drawn_once(draw: Callable[..., Any], *args: Any) -> Any:
  """`draw(*args)`, computed once where it is read many times.

  On CPU the PRNG hash is written out (`training.cpu.unroll_threefry`), a
  chain of integer operations that XLA counts as cheap and so copies into
  every fusion that reads a draw: a per-example draw broadcast over
  `[B, C+1]` coefficients was hashed again for each entry, forward and
  backward (2.5-4.5x VPD's TMS steps), and SPD's `[B, C]` masks in each of
  their three or four readers. On CPU the draw runs in a branch of a
  conditional whose predicate XLA cannot fold (XLA never fuses across
  one), so it is stored once; the values are those of `draw(*args)`. Other
  backends read a conditional's predicate on the host, so there it is
  `draw(*args)` as it is. `draw` returns arrays or typed keys."""
  if jax.default_backend() != "cpu":
    return draw(*args)
  impls = {}

  def branch(*a):
    out = draw(*a)
    leaves, tree = jax.tree.flatten(out)
    data = []
    for i, leaf in enumerate(leaves):
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        impls[i] = jax.random.key_impl(leaf)
        leaf = jax.random.key_data(leaf)
      data.append(leaf)
    impls["tree"] = tree
    return data

  shapes = jax.eval_shape(branch, *args)
  data = jax.lax.cond(
      jax.lax.optimization_barrier(jnp.bool_(True)), branch,
      lambda *a: [jnp.zeros(s.shape, s.dtype) for s in shapes], *args)
  leaves = [jax.random.wrap_key_data(d, impl=impls[i]) if i in impls else d
            for i, d in enumerate(data)]
  return jax.tree.unflatten(impls["tree"], leaves)
