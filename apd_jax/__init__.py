"""apd_jax: Attribution-based, Stochastic and adVersarial Parameter
Decomposition in JAX.

    import apd_jax
    method = apd_jax.APD(n_components=5, topk=0.211, rank=3)
    training = apd_jax.Training(steps=20_000, lr=3e-2, warmup_frac=0.05)
    result = apd_jax.decompose(apply_fn, params, sample_fn, include="W",
                               method=method, training=training)

The method object says what is optimised (`APD`, `SPD(n_components=20,
importance_coeff=3e-3)` or `VPD(n_components=20)`), `Training` how. The
building blocks that `decompose` and `decompose_sweep` are made of
(`make_target`, `init_state`, `make_train_step`, `fit`, `evaluate`, ...)
are in `apd_jax.engine`; the methods and their protocol in
`apd_jax.methods` (`methods.register` adds one). Importing apd_jax changes
nothing in JAX.
"""

from apd_jax import engine
from apd_jax import methods
from apd_jax.engine.api import Decomposition
from apd_jax.engine.api import decompose
from apd_jax.engine.export import load
from apd_jax.engine.export import save
from apd_jax.engine.sweep import SweepResult
from apd_jax.engine.sweep import decompose_sweep
from apd_jax.methods import APD
from apd_jax.methods import SPD
from apd_jax.methods import VPD
from apd_jax.training.distributed import Preempted
from apd_jax.training.options import Training
from apd_jax.training.sharding import make_mesh

__version__ = "0.3.0"

__all__ = ["APD", "SPD", "VPD", "Decomposition", "Preempted", "SweepResult",
           "Training", "decompose", "decompose_sweep", "engine", "load",
           "make_mesh", "methods", "save"]
