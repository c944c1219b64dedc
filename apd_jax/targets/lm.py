"""The transformer language model as a command-line target.

`config.target.path` names params written by `scripts/train_lm.py` (the
usual way: train once, decompose many times); without it the model is
trained here with `config.target`'s training fields. The data are windows
of `context` bytes of the standard library's text (`models/text.py`); each
position of each window is an example for the masks, and the
reconstruction is the KL divergence of the next-byte distributions.

The report: per alive component, its top contexts on held-out text (the
16 bytes before the position where it is most important, the position's
byte marked), its firing density and the reconstruction cost of switching
it off there, as `top_contexts.txt` and `top_contexts.html`.
"""

from __future__ import annotations

import functools
import html
import os

import jax
import ml_collections
import numpy as np

from apd_jax.analysis import summary as summary_lib
from apd_jax.models import lm_target
from apd_jax.models import text
from apd_jax.models import transformer
from apd_jax.models.transformer import TransformerConfig

ARCH = ("vocab", "n_layers", "d_model", "n_heads", "d_mlp", "context",
        "tied")
TRAIN = ("steps", "batch_size", "lr")
SAMPLER = ("context", "max_train_bytes", "max_heldout_bytes", "heldout_frac")
HAS_AUX = False
METRICS = ("heldout_nats_per_byte_target", "heldout_nats_per_byte_masked")
SELECT = ("heldout_nats_per_byte_masked", "min")
SUCCESS = None
BEFORE = 24          # bytes of context shown before the marked position
# Every matrix of every block: the attention's kernels and the MLP's.
INCLUDE = r"(query|key|value|out|mlp_in|mlp_out)'\]\['kernel"


def configure(c) -> None:
  """The LM configs' shared settings on `c`: the default transformer (the
  one `configs/lm_target.py` trains) as the target, every matrix
  decomposed, KL on the next-byte logits, and the training schedule."""
  c.target = ml_collections.ConfigDict(dict(
      name="lm", path="", vocab=256, n_layers=2, d_model=128, n_heads=4,
      d_mlp=512, context=128, tied=True, max_train_bytes=4_000_000,
      max_heldout_bytes=400_000, heldout_frac=0.1, steps=4000,
      batch_size=32, lr=2e-3))
  c.include = INCLUDE
  c.recon = "kl"
  c.lr = 2e-3
  c.lr_schedule = "cosine"
  c.log_every = 50
  c.checkpoint_every = 500
  c.eval_batches = 4


def config_of(params: dict) -> TransformerConfig:
  """The architecture, read from the params' shapes."""
  p = params["params"]
  vocab, d = p["embed"]["embedding"].shape
  blocks = sorted(k for k in p if k.startswith("block_"))
  heads = p[blocks[0]]["query"]["kernel"].shape[1]
  return TransformerConfig(
      vocab=vocab, n_layers=len(blocks), d_model=d, n_heads=heads,
      d_mlp=p[blocks[0]]["mlp_in"]["kernel"].shape[1],
      context=p["pos"].shape[0], tied="unembed" not in p)


def apply(params: dict, tokens: jax.Array) -> jax.Array:
  """Logits `[B, T, vocab]` of the model whose params these are."""
  return transformer.apply(params, tokens, config_of(params))


def init(key, **arch) -> dict:
  return transformer.init(key, TransformerConfig(**arch))


@functools.lru_cache(maxsize=4)
def corpus(max_train_bytes: int, max_heldout_bytes: int,
           heldout_frac: float) -> text.Corpus:
  return text.stdlib_corpus(max_train_bytes=max_train_bytes,
                            max_heldout_bytes=max_heldout_bytes,
                            heldout_frac=heldout_frac)


def sampler(*, context: int, max_train_bytes: int, max_heldout_bytes: int,
            heldout_frac: float):
  """Windows of `context` training bytes."""
  return text.sampler(corpus(max_train_bytes, max_heldout_bytes,
                             heldout_frac).train, context)


def build(t, seed: int):
  """The model trained on the corpus (when `t.path` is not given)."""
  c = corpus(t.max_train_bytes, t.max_heldout_bytes, t.heldout_frac)
  params, log = lm_target.train(
      TransformerConfig(**{k: t[k] for k in ARCH}), c, steps=t.steps,
      batch_size=t.batch_size, lr=t.lr, seed=seed,
      log_every=min(100, t.steps), eval_every=t.steps)
  return params, np.array([r["train"] for r in log])


def variants(c, *, tiny: bool = False) -> None:
  """`tiny`: a 1-layer d_model 32 model, trained here, decomposed briefly."""
  if tiny:
    c.target.update(n_layers=1, d_model=32, n_heads=2, d_mlp=64, context=16,
                    max_train_bytes=100_000, max_heldout_bytes=10_000,
                    steps=40, batch_size=8, path="")
    c.update(steps=20, batch_size=8, log_every=10, print_every=10,
             eval_batches=1, checkpoint_every=0, n_components=8)


def report(config, result, sample_fn, workdir: str) -> dict:
  """Top contexts of every alive component on held-out text, and the
  held-out cross-entropy of the target and of the `G`-masked pass."""
  del sample_fn
  t = config.target
  held = corpus(t.max_train_bytes, t.max_heldout_bytes, t.heldout_frac)
  held_fn = text.sampler(held.heldout, t.context)
  tops = summary_lib.top_inputs(   # ties not broken: a pass per candidate
      result, held_fn, jax.random.PRNGKey(5), k=8, max_ties=8,
      batch_size=min(config.batch_size, 64),
      n_batches=min(4, config.eval_batches))
  spd = type(result.method).__name__ == "SPD"
  write_contexts(tops, workdir, score="G" if spd else "A²")
  return dict(heldout_components_described=len(tops),
              **heldout_cross_entropy(result, held.heldout, t.context))


def heldout_cross_entropy(result, data: np.ndarray, context: int, *,
                          max_windows: int = 256, batch_size: int = 32
                          ) -> dict:
  """Next-byte cross-entropy (nats per byte) on consecutive held-out
  windows: of the target (`_target`), and of the pass with only the
  active components (`_masked`; SPD: masks `G`; APD: the top-k mask).
  SPD also gives `_active`: masks 1 where `G > threshold`, else 0, the
  binary pass over exactly the subcomponents its L0 counts."""
  tiles = text.tiles(data, context + 1)[:max_windows]
  spd = type(result.method).__name__ == "SPD"
  ce = {"target": [], "masked": [], **({"active": []} if spd else {})}
  for i in range(0, len(tiles), batch_size):
    w = jax.numpy.asarray(tiles[i:i + batch_size])
    x, nxt = w[:, :-1], w[:, 1:]
    passes = {"target": result.target.batch(x)[0]}
    if spd:
      G = result.causal_importances(x)
      passes["masked"] = result.apply(x, G)
      passes["active"] = result.apply(x, {
          k: (g > result.method.threshold).astype(g.dtype)
          for k, g in G.items()})
    else:
      passes["masked"] = result.apply(x, result.topk_mask(x))
    for name, logits in passes.items():
      logp = jax.nn.log_softmax(logits, -1)
      ce[name].append(-np.asarray(jax.numpy.take_along_axis(
          logp, nxt[..., None], -1)).mean())
  return {f"heldout_nats_per_byte_{k}": float(np.mean(v))
          for k, v in ce.items()}


def context_of(window: np.ndarray, position: int) -> tuple[str, str, str]:
  """`(before, at, after)`: the text before the position, its byte, and
  the next byte (what the model predicts), printable."""
  show = lambda b: bytes(b.astype(np.uint8)).decode(  # noqa: E731
      "utf-8", "replace")
  start = max(0, position - BEFORE)
  return (show(window[start:position]), show(window[position:position + 1]),
          show(window[position + 1:position + 2]))


def write_contexts(tops, workdir: str, score: str = "G") -> None:
  """`top_contexts.txt` (the marked byte in [[ ]]) and `top_contexts.html`
  (the marked byte highlighted); `score` names the scores (SPD's causal
  importance `G`, APD's attribution `A²`)."""
  lines, blocks = [], []
  for tp in sorted(tops, key=lambda t: (t.group, -t.frequency)):
    head = (f"{tp.group} c{tp.index}: fires on {100 * tp.frequency:.2f}% "
            f"of positions")
    lines.append(head)
    rows = []
    positions = (tp.positions if tp.positions is not None
                 else [tp.inputs.shape[1] - 1] * len(tp.inputs))
    for x, pos, g, abl in zip(tp.inputs, positions, tp.scores,
                              tp.ablation, strict=True):
      before, at, after = context_of(np.asarray(x), int(pos))
      lines.append(f"  {score} {g:.3g}  ablation {abl:.3g}  "
                   f"{before!r}[[{at!r}]] -> {after!r}")
      rows.append(f"<tr><td>{g:.3g}</td><td>{abl:.3g}</td><td><code>"
                  f"{html.escape(before)}<mark>{html.escape(at)}</mark>"
                  f"</code></td><td><code>{html.escape(after)}</code></td>"
                  f"</tr>")
    blocks.append(f"<h2>{html.escape(head)}</h2>\n<table><tr>"
                  f"<th>{score}</th>"
                  f"<th>ablation</th><th>context (marked: the position)</th>"
                  f"<th>next byte</th></tr>\n" + "\n".join(rows) +
                  "\n</table>")
  with open(os.path.join(workdir, "top_contexts.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(workdir, "top_contexts.html"), "w") as f:
    f.write("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            "<title>Top contexts per component</title><style>"
            "code{white-space:pre} mark{background:#fc6}</style></head>"
            "<body>\n<h1>Top contexts per component (held-out text)</h1>\n"
            + "\n".join(blocks) + "\n</body></html>\n")

