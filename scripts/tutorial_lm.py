r"""Tutorial: decompose your own small Flax transformer trained on real text.

  python scripts/tutorial_lm.py --workdir=/tmp/apd_tutorial_lm

A 1-layer byte-level transformer written as our own linen module (Flax's
multi-head attention with a causal mask, a GELU MLP, tied embeddings) is
trained on the Python standard library's source, then SPD splits its
attention's query, key, value and output kernels and both MLP matrices into
rank-one subcomponents, each position of each window an example. We print
the summary of every subcomponent, write each one's top contexts on
held-out files (`top_contexts.txt`, `top_contexts.html`) and compare the
held-out cross-entropy of the target with that of the pass that keeps only
the important subcomponents. About 3.5 minutes on a 2-core CPU.
The README's tutorial shows the code between the `tutorial` markers.
"""

import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags (defined when run, so the tests can import the script)."""
  flags.DEFINE_string("workdir", "/tmp/apd_tutorial_lm", "Where reports go.")
  flags.DEFINE_integer("steps", 2000, "Decomposition steps.")
  flags.DEFINE_integer("model_steps", 2000, "Target training steps.")


def tutorial(workdir: str, steps: int = 2000, model_steps: int = 2000,
             train_bytes: int = 2_000_000):
  """The tutorial; returns `(result, held-out cross-entropies)`."""
  # --- tutorial start ---
  import jax
  import jax.numpy as jnp
  import optax
  from flax import linen as nn

  import apd_jax
  from apd_jax.models import text
  from apd_jax.targets import lm

  T = 64                                        # bytes per window

  class TinyLM(nn.Module):
    """Bytes -> next-byte logits: pre-LN causal attention, a GELU MLP."""
    d: int = 64

    @nn.compact
    def __call__(self, tokens):                 # [B, T] -> [B, T, 256]
      embed = nn.Embed(256, self.d, name="embed")
      pos = self.param("pos", nn.initializers.normal(0.02), (T, self.d))
      x = embed(tokens) + pos[:tokens.shape[-1]]
      x = x + nn.MultiHeadDotProductAttention(num_heads=4, name="attn")(
          nn.LayerNorm()(x), mask=nn.make_causal_mask(tokens))
      h = nn.gelu(nn.Dense(4 * self.d, name="mlp_in")(nn.LayerNorm()(x)))
      x = x + nn.Dense(self.d, name="mlp_out")(h)
      return embed.attend(nn.LayerNorm()(x))

  # 1. Real text that every machine with Python has, split by file.
  corpus = text.stdlib_corpus(max_train_bytes=train_bytes,
                              max_heldout_bytes=train_bytes // 10)
  windows = text.sampler(corpus.train, T + 1)   # inputs and next bytes

  # 2. Train the model as usual.
  model = TinyLM()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, T), jnp.int32))
  opt = optax.adam(optax.cosine_decay_schedule(3e-3, model_steps))
  opt_state = opt.init(params)

  def loss_fn(params, w):                       # mean next-byte CE
    logits = model.apply(params, w[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, w[:, 1:]).mean()

  @jax.jit
  def train_step(params, opt_state, key):
    grads = jax.grad(loss_fn)(params, windows(key, 32))
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for i in range(model_steps):
    params, opt_state = train_step(params, opt_state, jax.random.PRNGKey(i))

  # 3. Decompose every matrix of the attention and the MLP with SPD: the
  #    3-D attention kernels [64, 4, 16] are the matrices [64, 64] they are,
  #    each position of each window is an example, KL on the logits.
  method = apd_jax.SPD(n_components=96, importance_coeff=3e-4, recon="kl",
                       faithfulness_coeff=1e4)
  training = apd_jax.Training(steps=steps, batch_size=8, lr=2e-3,
                              lr_schedule="cosine",
                              log_every=max(1, steps // 10))
  result = apd_jax.decompose(
      model.apply, params, text.sampler(corpus.train, T),
      include=r"(query|key|value|out|mlp_in|mlp_out)'\]\['kernel",
      method=method, training=training)

  # 4. Which subcomponents are alive, how often each fires (G > 0.1 at a
  #    position), its mean importance then, and its norm.
  print(result.summary(batch_size=16).table())

  # 5. Each alive subcomponent's top contexts in held-out files, the byte
  #    where it fires marked, with the KL cost of switching it off there.
  tops = result.top_inputs(text.sampler(corpus.heldout, T), k=4,
                           batch_size=16, n_batches=2, max_ties=4)
  lm.write_contexts(tops, workdir)
  with open(os.path.join(workdir, "top_contexts.txt")) as f:
    print(f.read()[:1500])

  # 6. Held-out cross-entropy (nats per byte): the target, and the pass
  #    that keeps only each position's important subcomponents (G).
  ce = lm.heldout_cross_entropy(result, corpus.heldout, T)
  print(ce)
  # --- tutorial end ---
  return result, ce


def main(argv):
  del argv
  os.makedirs(FLAGS.workdir, exist_ok=True)
  tutorial(FLAGS.workdir, FLAGS.steps, FLAGS.model_steps)


if __name__ == "__main__":
  define_flags()
  app.run(main)
