"""apd_jax: Attribution-based Parameter Decomposition in JAX."""

from apd_jax.api import Decomposition
from apd_jax.api import decompose
from apd_jax.api import evaluate
from apd_jax.components import Components
from apd_jax.objective import Hypers
from apd_jax.objective import Settings
from apd_jax.sweep import SweepResult
from apd_jax.sweep import decompose_sweep

__version__ = "0.1.0"

__all__ = ["Components", "Decomposition", "Hypers", "Settings", "SweepResult",
           "decompose", "decompose_sweep", "evaluate"]
