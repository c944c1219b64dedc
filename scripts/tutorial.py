r"""Tutorial: decompose your own small Flax NNX model.

  python scripts/tutorial.py --workdir=/tmp/apd_tutorial

A toy model of superposition written as our own NNX module squeezes 5 sparse
features through 2 hidden units. We train it, decompose its weight matrix into
5 components through `apd_jax.decompose`, save a figure of the components,
measure how well they recover the features (MMCS, ML2R) and ask which
component each feature uses: a summary of every component and its top
inputs. About half a minute on a 2-core CPU.
The README's tutorial shows the code between the `tutorial` markers.
"""

import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags (defined when run, so the tests can import the script)."""
  flags.DEFINE_string("workdir", "/tmp/apd_tutorial", "Where the figure goes.")
  flags.DEFINE_integer("steps", 10_000, "Decomposition steps.")


def tutorial(workdir: str, steps: int = 10_000, model_steps: int = 5000):
  """The tutorial; returns `(result, {feature: its top component})`."""
  # --- tutorial start ---
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  import apd_jax
  from apd_jax.analysis import plotting
  from apd_jax.analysis.summary import describe_input
  from apd_jax.core import metrics

  class Superposition(nnx.Module):
    """5 sparse features through 2 hidden units and back: relu(x Wᵀ W + b)."""

    def __init__(self, rngs):
      self.W = nnx.Param(0.6 * jax.random.normal(rngs.params(), (2, 5)))
      self.b = nnx.Param(jnp.zeros(5))

    def __call__(self, x):
      return nnx.relu(x @ self.W.T @ self.W + self.b)

  def sample_fn(key, n):  # each feature on with prob. 0.05, value U[0, 1]
    on, val = jax.random.uniform(key, (2, n, 5))
    return jnp.where(on < 0.05, val, 0.0)

  # 1. Train the model as usual.
  model = Superposition(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adamw(5e-3, weight_decay=0.01),
                      wrt=nnx.Param)

  @nnx.jit
  def train_step(model, opt, x):
    loss_fn = lambda m: jnp.mean((m(x) - x) ** 2)  # noqa: E731
    opt.update(model, nnx.grad(loss_fn)(model))

  for i in range(model_steps):
    train_step(model, opt, sample_fn(jax.random.PRNGKey(i), 1024))

  # 2. A pure apply_fn(params, x) over a plain pytree of params.
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  apply_fn = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731

  # 3. Decompose W (not b) into 5 components, with the paper's TMS settings:
  #    what is optimised (the method) and how it is trained, as two objects.
  method = apd_jax.APD(n_components=5, rank=3, topk=0.211,
                       simplicity_coeff=0.7, attribution_point="components")
  training = apd_jax.Training(steps=steps, batch_size=2048, lr=0.03,
                              warmup_frac=0.05, log_every=steps // 4)
  result = apd_jax.decompose(apply_fn, params, sample_fn, include="W",
                             method=method, training=training)
  print(result.metrics)

  # 4. The components: each feature's column of W beside each component's.
  W = params["W"]                                   # [2 hidden, 5 features]
  P = result.component_weights["['W']"]             # [5 comps, 2, 5]
  scores = dict(MMCS=float(metrics.mmcs(W, P)),
                ML2R=float(metrics.ml2r(W, P)))
  plotting.plot_columns(W, P, f"{workdir}/components.png", column="feature",
                        metrics=scores)
  print(scores)

  # 5. What does each component do? How often it is active on fresh inputs,
  #    its mean attribution then, its norm and rank; then its top inputs,
  #    each with the cost of switching the component off there.
  print(result.summary().table())
  for t in result.top_inputs(k=3):
    print(f"component {t.index}:", [describe_input(x) for x in t.inputs])
  # The component each feature uses when it is on alone.
  attr = result.attributions(jnp.eye(5))            # [5 features, 5 comps]
  top = {j: int(c) for j, c in enumerate(jnp.argmax(attr, axis=1))}
  print("feature -> component:", top)
  # --- tutorial end ---
  return result, top


def main(argv):
  del argv
  os.makedirs(FLAGS.workdir, exist_ok=True)
  tutorial(FLAGS.workdir, FLAGS.steps)


if __name__ == "__main__":
  define_flags()
  app.run(main)
