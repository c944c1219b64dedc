"""The building blocks that `apd_jax.decompose` and `decompose_sweep` are
made of, for a training loop of your own:

    from apd_jax import engine
    target = engine.make_target(apply_fn, params, "W", sample_fn=sample_fn)
    engine.check_inputs(method, target, sample_fn, training)
    state = engine.init_state(method, target, training, sample_fn=sample_fn)
    plan = method.plan(target, sample_fn, training.batch_size,
                       state.components)
    step = engine.make_train_step(method, plan, target, sample_fn, training)
    state, history = engine.fit(state, step, engine.run_keys(0)[1],
                                steps=training.steps)

`Target` is the decomposed model, `TrainState` a run's state, `Components`
APD's factors; `evaluate` gives a decomposition's final metrics.
"""

from apd_jax.core.components import Components
from apd_jax.core.target import Target
from apd_jax.engine.api import check_inputs
from apd_jax.engine.api import evaluate
from apd_jax.engine.api import finish
from apd_jax.engine.api import fit
from apd_jax.engine.api import init_state
from apd_jax.engine.api import make_target
from apd_jax.engine.api import make_train_step
from apd_jax.engine.api import optimizer
from apd_jax.engine.api import run_keys
from apd_jax.training.train import TrainState

__all__ = ["Components", "Target", "TrainState", "check_inputs", "evaluate",
           "finish", "fit", "init_state", "make_target", "make_train_step",
           "optimizer", "run_keys"]
