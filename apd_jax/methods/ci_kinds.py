"""Which causal-importance function a method uses, as options shared by SPD
and VPD: its parameters, its logits, and the checks of its options.

- 'scalar': SPD's MLP per subcomponent on its inner activation `h_c = a ·
  u_c` (`ci_functions.scalar_mlp`, hidden width `gate_hidden`);
- 'layerwise': an MLP per product on its input `a_k`
  (`ci_functions.layerwise`);
- 'global': one MLP on every product's input concatenated
  (`ci_functions.global_`);
- 'transformer': for inputs with a position axis, transformers over the
  positions, one per chunk of products (`ci_transformer`).

Each maps a product's inputs to the logits `z [..., C_k]` that the two
leaky hard sigmoids squash.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Callable

import jax

from apd_jax.methods import ci_functions
from apd_jax.methods import ci_transformer
from apd_jax.methods.base import check_choice
from apd_jax.methods.base import check_positive

Array = jax.Array
KINDS = ("scalar", "layerwise", "global", "transformer")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CIOptions:
  """The causal-importance function's options (keywords only).

  Attributes:
    ci_fn: 'scalar', 'layerwise', 'global' or 'transformer' (module
      docstring; each method says its default and which it takes).
    ci_hidden: the MLPs' hidden widths ('layerwise', 'global'), the
      transformer's MLP's ('transformer'); VPD's 'scalar': the first is
      the width (SPD's: `gate_hidden`) [(16,)].
    ci_d_model, ci_blocks, ci_heads, ci_chunks: the transformer's width
      [64], blocks [2], attention heads [4], and how many independent
      transformers the products are split into [1: one over all].
  """
  ci_fn: str = "layerwise"
  ci_hidden: tuple[int, ...] = (16,)
  ci_d_model: int = 64
  ci_blocks: int = 2
  ci_heads: int = 4
  ci_chunks: int = 1

  def _check_ci(self, kinds: tuple[str, ...]) -> None:
    """Checks the options (`ci_fn` among `kinds`); `ci_hidden` a tuple."""
    object.__setattr__(self, "ci_hidden",
                       tuple(int(h) for h in self.ci_hidden))
    check_choice("ci_fn", self.ci_fn, kinds)
    check_positive(ci_d_model=self.ci_d_model, ci_blocks=self.ci_blocks,
                   ci_heads=self.ci_heads, ci_chunks=self.ci_chunks)
    if any(h < 1 for h in self.ci_hidden):
      raise ValueError(f"ci_hidden widths must be positive, got "
                       f"{self.ci_hidden}")
    if self.ci_fn == "transformer" and (
        self.ci_d_model % self.ci_heads or (self.ci_d_model // self.ci_heads)
        % 2):
      raise ValueError(f"ci_d_model ({self.ci_d_model}) must be a multiple "
                       f"of ci_heads ({self.ci_heads}) with an even head "
                       f"width (rotary embeddings rotate pairs)")


def check_inputs(s: CIOptions,
                 shapes: Callable[[], dict[str, tuple[int, ...]]]) -> None:
  """The products' input shapes per example (`shapes()`: `{label: (1, ...,
  i)}`, a batch of one; asked for only here) against the CI function: the
  transformer reads `[T, i]` with one position axis of one length, and its
  chunks need as many products."""
  if s.ci_fn != "transformer":
    return
  shapes = shapes()
  positions = {k: v[1:-1] for k, v in shapes.items()}
  if any(len(t) != 1 for t in positions.values()) or len(
      set(positions.values())) > 1:
    raise ValueError(
        f"ci_fn='transformer' reads inputs [B, T, i] with one position axis "
        f"of one length; the products' inputs per example are "
        f"{ {k: v[1:] for k, v in shapes.items()} }: use 'layerwise' or "
        f"'global'")
  ci_transformer.chunks(tuple(shapes), s.ci_chunks)


def init(key: Array, s: CIOptions, d_ins: dict[str, int],
         n_components: dict[str, int], gate_hidden: int | None = None
         ) -> dict[str, Any]:
  """The CI function's parameters for products `{label: i_k}` with
  `{label: C_k}` subcomponents ('scalar': `{label: MLPs}`, the k-th
  product's drawn with `fold_in(key, k)` in the order of `d_ins`)."""
  if s.ci_fn == "scalar":
    return {label: ci_functions.init_scalar_mlp(
        jax.random.fold_in(key, k), n_components[label], gate_hidden)
            for k, label in enumerate(d_ins)}
  if s.ci_fn == "transformer":
    return ci_transformer.init(key, d_ins, n_components, n_chunks=s.ci_chunks,
                               d_model=s.ci_d_model, n_blocks=s.ci_blocks,
                               n_heads=s.ci_heads, hidden=s.ci_hidden)
  make = (ci_functions.init_global if s.ci_fn == "global"
          else ci_functions.init_layerwise)
  return make(key, d_ins, n_components, s.ci_hidden)


def logits(s: CIOptions, params: dict[str, Any], inputs: dict[str, Array],
           n_components: dict[str, int],
           inner: Callable[[], dict[str, Array]] | None = None
           ) -> dict[str, Array]:
  """`{label: z [..., C_k]}` from the products' inputs `{label: a_k}`;
  'scalar' reads `inner()`, the inner activations `{label: h [..., C_k]}`."""
  if s.ci_fn == "scalar":
    return {k: ci_functions.scalar_mlp(params[k], h)
            for k, h in inner().items()}
  if s.ci_fn == "transformer":
    return ci_transformer.apply(params, inputs, n_components, s.ci_heads)
  if s.ci_fn == "global":
    return ci_functions.global_(params, inputs, n_components)
  return ci_functions.layerwise(params, inputs)
