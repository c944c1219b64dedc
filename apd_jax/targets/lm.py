"""The transformer language model as a target: its training, and its
place on the command line.

    params, log = train(config, corpus, steps=3000, batch_size=32, lr=1e-3)
    heldout_loss(params, config, corpus.heldout)     # nats per byte

`train` minimises the next-byte cross-entropy with `optimizer` in the
targets' shared loop (`targets/fit.py`), `log_every` steps a compiled
chunk. `config.target.path` names params written by `scripts/train_lm.py`
(the usual way: train once, decompose many times); without it `build`
trains the model with `config.target`'s training fields. The data are
windows of `context` bytes of the standard library's text
(`models/text.py`); each position of each window is an example for the
masks, and the reconstruction is the KL divergence of the next-byte
distributions.

The report: per alive component, its top contexts on held-out text (the
24 tokens before the position where it is most important, the position's
token marked), its firing density and the reconstruction cost of switching
it off there, as `top_contexts.txt` and `top_contexts.html`; tokens are
written as text by `decode(token ids) -> str` (default: bytes as UTF-8, for
a model of another vocabulary its tokenizer's decoder).
"""

from __future__ import annotations

import functools
import html
import os
import sys
import time
from typing import Callable
from typing import Sequence

import jax
import ml_collections
import numpy as np
import optax

from apd_jax.analysis import summary as summary_lib
from apd_jax.core import losses
from apd_jax.models import text
from apd_jax.models import transformer
from apd_jax.models.transformer import TransformerConfig
from apd_jax.targets import fit as training

ARCH = ("vocab", "n_layers", "d_model", "n_heads", "d_mlp", "context",
        "tied")
TRAIN = ("steps", "batch_size", "lr")
SAMPLER = ("context", "max_train_bytes", "max_heldout_bytes", "heldout_frac")
HAS_AUX = False
METRICS = ("heldout_nats_per_byte_target", "heldout_nats_per_byte_masked")
SELECT = ("heldout_nats_per_byte_masked", "min")
SUCCESS = None
BEFORE = 24          # tokens of context shown before the marked position
Decode = Callable[[Sequence[int]], str]   # token ids -> text
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
  c.method.recon = "kl"       # both methods take it
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


# -- training the model ------------------------------------------------------


def optimizer(lr: float, steps: int, warmup: int,
              weight_decay: float = 0.01) -> optax.GradientTransformation:
  """Gradients clipped to global norm 1, then AdamW (weight decay on the
  matrices only) at a rate warming up linearly from 0 to `lr` over
  `warmup` steps, then cosine-decaying to `lr / 10` at `steps`."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps,
                                                end_value=lr * 0.1)
  decay_matrices = lambda p: jax.tree.map(lambda a: a.ndim >= 2, p)  # noqa: E731
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=weight_decay,
                                 mask=decay_matrices))


# Compiled once per architecture and batch shape, not once per call.
_window_loss = jax.jit(transformer.next_token_loss, static_argnames="config")


def heldout_loss(params: dict, config: TransformerConfig, data: np.ndarray,
                 *, batch_size: int = 64) -> float:
  """Mean next-byte cross-entropy (nats per byte) over the consecutive
  windows of `context + 1` bytes covering `data` once:
  `-mean_{w, t} log p(w[t + 1] | w[:t + 1])`."""
  tiles = text.tiles(data, config.context + 1)
  total, n = 0.0, 0
  for i in range(0, len(tiles), batch_size):
    w = tiles[i:i + batch_size]
    total += float(_window_loss(params, w, config=config)) * len(w)
    n += len(w)
  return total / n


def _say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def train(config: TransformerConfig, corpus: text.Corpus, *, steps: int,
          batch_size: int, lr: float, seed: int = 0, warmup: int = 200,
          log_every: int = 100, eval_every: int = 500,
          say: Callable[[str], None] = _say) -> tuple[dict, list[dict]]:
  """`(params, log)`: the model trained for `steps` (`optimizer`, the
  shared loop `targets/fit.py`) on windows of `context + 1` bytes of
  `corpus.train`; `log` has one record per `log_every` steps (step, mean
  training loss, elapsed seconds, and `heldout`, the `heldout_loss` on
  `corpus.heldout`, every `eval_every` steps and at the end)."""
  init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
  params = transformer.init(init_key, config)
  opt = optimizer(lr, steps, min(warmup, steps // 2))
  sample = text.sampler(corpus.train, config.context + 1)
  log, t0 = [], time.perf_counter()

  def loss(p, window):
    return transformer.next_token_loss(p, window, config)

  def on_log(done, p, value):
    record = dict(step=done, train=value, elapsed_s=time.perf_counter() - t0)
    if done % eval_every == 0 or done >= steps:
      record["heldout"] = heldout_loss(p, config, corpus.heldout)
    log.append(record)
    rate = done * batch_size * config.context / max(record["elapsed_s"], 1e-9)
    held = (f"  held-out {record['heldout']:.4f}" if "heldout" in record
            else "")
    say(f"step {done}/{steps}  train {value:.4f} nats/byte{held}"
        f"  {rate:.0f} tokens/s")

  params, _ = training.fit(loss, params, opt, sample, data_key, steps=steps,
                           batch_size=batch_size, log_every=log_every,
                           on_log=on_log)
  return params, log


def build(t, seed: int):
  """The model trained on the corpus (when `t.path` is not given)."""
  c = corpus(t.max_train_bytes, t.max_heldout_bytes, t.heldout_frac)
  params, log = train(
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
             eval_batches=1, checkpoint_every=0)
    c.method.n_components = 8


def report(result, sample_fn, workdir: str, *, t: dict, batch_size: int,
           eval_batches: int, decode: Decode | None = None, **_) -> dict:
  """Top contexts of every alive component on held-out text (tokens as
  text by `decode`, default bytes), and the held-out cross-entropy of the
  target and of the masked passes."""
  del sample_fn
  held = corpus(t["max_train_bytes"], t["max_heldout_bytes"],
                t["heldout_frac"])
  held_fn = text.sampler(held.heldout, t["context"])
  tops = summary_lib.top_inputs(   # ties not broken: a pass per candidate
      result, held_fn, jax.random.PRNGKey(5), k=8, max_ties=8,
      batch_size=min(batch_size, 64), n_batches=min(4, eval_batches))
  write_contexts(tops, workdir, score=result.method.SCORE,
                 decode=decode)
  return dict(heldout_components_described=len(tops),
              **heldout_cross_entropy(result, held.heldout, t["context"]))


def heldout_cross_entropy(result, data: np.ndarray, context: int, *,
                          max_windows: int = 256, batch_size: int = 32,
                          chunk: int | None = None) -> dict:
  """Next-byte cross-entropy (nats per byte) on consecutive held-out
  windows: of the target (`_target`), of the pass with the masks of the
  method's minimality pass (`_masked`; SPD: `G`; APD: the top-k mask),
  and of the pass with 1 on exactly the active components, 0 elsewhere
  (`_active`, the components its L0 counts; where the masks are binary, as
  APD's, the two passes are one). The cross-entropy is computed `chunk`
  positions at a time (`losses.cross_entropy_rows`)."""
  tiles = text.tiles(data, context + 1)[:max_windows]
  ce = {"target": [], "masked": [], "active": []}
  for i in range(0, len(tiles), batch_size):
    w = jax.numpy.asarray(tiles[i:i + batch_size])
    x, nxt = w[:, :-1], w[:, 1:]
    passes = {"target": result.target.batch(x)[0]}
    masks = result.masks(x)
    active = {k: a.astype(masks[k].dtype) for k, a in result.active(x).items()}
    passes["masked"] = result.apply(x, masks)
    passes["active"] = (passes["masked"] if all(
        bool(jax.numpy.all(masks[k] == a)) for k, a in active.items())
                        else result.apply(x, active))
    for name, logits in passes.items():
      ce[name].append(np.asarray(losses.cross_entropy_rows(
          logits, nxt, chunk=chunk)).mean())
  return {f"heldout_nats_per_byte_{k}": float(np.mean(v))
          for k, v in ce.items()}


def decode_bytes(tokens: Sequence[int]) -> str:
  """Byte tokens as UTF-8 text (an invalid sequence as U+FFFD)."""
  return bytes(np.asarray(tokens, np.int64).astype(np.uint8)).decode(
      "utf-8", "replace")


def context_of(window: np.ndarray, position: int,
               decode: Decode | None = None) -> tuple[str, str, str]:
  """`(before, at, after)`: the `BEFORE` tokens before the position, its
  token, and the next one (what the model predicts), each as text by
  `decode` (default `decode_bytes`: the tokens are bytes)."""
  show = decode or decode_bytes
  ids = [int(t) for t in np.asarray(window)]
  start = max(0, position - BEFORE)
  return (show(ids[start:position]), show(ids[position:position + 1]),
          show(ids[position + 1:position + 2]))


def write_contexts(tops, workdir: str, score: str = "G",
                   decode: Decode | None = None) -> None:
  """`top_contexts.txt` (the marked token in [[ ]]) and `top_contexts.html`
  (the marked token highlighted); `score` names the scores (SPD's causal
  importance `G`, APD's attribution `A²`); `decode(token ids) -> str`
  writes tokens as text (default: bytes, `decode_bytes`)."""
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
      before, at, after = context_of(np.asarray(x), int(pos), decode)
      lines.append(f"  {score} {g:.3g}  ablation {abl:.3g}  "
                   f"{before!r}[[{at!r}]] -> {after!r}")
      rows.append(f"<tr><td>{g:.3g}</td><td>{abl:.3g}</td><td><code>"
                  f"{html.escape(before)}<mark>{html.escape(at)}</mark>"
                  f"</code></td><td><code>{html.escape(after)}</code></td>"
                  f"</tr>")
    blocks.append(f"<h2>{html.escape(head)}</h2>\n<table><tr>"
                  f"<th>{score}</th>"
                  f"<th>ablation</th><th>context (marked: the position)</th>"
                  f"<th>next token</th></tr>\n" + "\n".join(rows) +
                  "\n</table>")
  with open(os.path.join(workdir, "top_contexts.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(workdir, "top_contexts.html"), "w") as f:
    f.write("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            "<title>Top contexts per component</title><style>"
            "code{white-space:pre} mark{background:#fc6}</style></head>"
            "<body>\n<h1>Top contexts per component (held-out text)</h1>\n"
            + "\n".join(blocks) + "\n</body></html>\n")

