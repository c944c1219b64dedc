"""apd_jax: Attribution-based and Stochastic Parameter Decomposition in JAX.

    import apd_jax
    method = apd_jax.APD(n_components=5, topk=0.211, rank=3)
    training = apd_jax.Training(steps=20_000, lr=3e-2, warmup_frac=0.05)
    result = apd_jax.decompose(apply_fn, params, sample_fn, include="W",
                               method=method, training=training)

The method object says what is optimised (`APD`, or `SPD(n_components=20,
importance_coeff=3e-3)`), `Training` how; the
building blocks (`make_target`, `init_state`, `make_train_step`, `fit`,
`evaluate`) are what `decompose` and `decompose_sweep` are made of.
"""

from apd_jax.core.components import Components
from apd_jax.core.target import Target
from apd_jax.engine.api import Decomposition
from apd_jax.engine.api import check_inputs
from apd_jax.engine.api import decompose
from apd_jax.engine.api import evaluate
from apd_jax.engine.api import fit
from apd_jax.engine.api import init_state
from apd_jax.engine.api import make_target
from apd_jax.engine.api import make_train_step
from apd_jax.engine.api import run_keys
from apd_jax.engine.export import load
from apd_jax.engine.export import save
from apd_jax.engine.sweep import SweepResult
from apd_jax.engine.sweep import decompose_sweep
from apd_jax.methods.apd import APD
from apd_jax.methods.apd_objective import Hypers
from apd_jax.methods.apd_objective import Plan
from apd_jax.methods.spd import SPD
from apd_jax.methods.spd_objective import SPDParams
from apd_jax.training.distributed import Preempted
from apd_jax.training.options import Training
from apd_jax.training.sharding import make_mesh
from apd_jax.training.train import TrainState

__version__ = "0.2.0"

__all__ = ["APD", "Components", "Decomposition", "Hypers", "Plan",
           "Preempted", "SPD", "SPDParams", "SweepResult", "Target",
           "TrainState", "Training",
           "check_inputs", "decompose", "decompose_sweep", "evaluate", "fit",
           "init_state", "load", "make_mesh", "make_target",
           "make_train_step", "run_keys", "save"]
