"""The benchmark's cases: which train step each one measures.

    CASES                      the paper's targets at their batch sizes,
                               APD, SPD and VPD (fixed options)
    config_case(name, c)       the step a config file trains
    sweep_cases(names, seeds)  scoreboard entries as the scoreboard trains
                               them (the step vmapped over seeds)
    family_cases(method, seeds)  a method's family members, the same way
"""

from __future__ import annotations

import dataclasses
import os

from apd_jax import methods
from apd_jax import targets
from apd_jax.cli import config as config_lib
from apd_jax.cli import family
from apd_jax.cli import scoreboard
from apd_jax.targets import lm

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                       "configs")


@dataclasses.dataclass(frozen=True)
class Case:
  """One measured train step: a target, a method and its options."""
  name: str
  target: str            # a module of apd_jax/targets
  dims: tuple            # its `init`'s keyword pairs
  batch_size: int
  options: dict          # the method's keyword arguments
  method: str = "apd"    # the registered method's name
  include: str = ""      # the decomposed leaves ('': INCLUDE[target])
  data: tuple = ()       # sampler keyword pairs besides DATA[target]
  runs: int = 1          # > 1: a sweep over seeds, the step vmapped
  train_steps: int = 0   # a config's steps (> 0: the run's time projected)


# Each target's usual decomposed leaves and its sampler's settings.
INCLUDE = {"tms": "W", "resid_mlp": "W_in|W_out", "lm": lm.INCLUDE,
           "gated": "W_in|W_out"}
DATA = {"tms": dict(feature_probability=0.05),
        "resid_mlp": dict(n_features=100, feature_probability=0.01)}

RESID = dict(topk=1.28, hidden_act_coeff=1.0, hidden_acts="post_relu",
             schatten_p=0.9, simplicity_coeff=10.0)
LM_OPTIONS = dict(n_components=32, rank=16, topk=2.0, recon="kl",
                  simplicity_coeff=1.0, schatten_p=0.9)
TMS_5_2 = (("n_features", 5), ("n_hidden", 2))
TMS_40_10 = (("n_features", 40), ("n_hidden", 10))
ONE_LAYER, TWO_LAYERS = (("n_layers", 1),), (("n_layers", 2),)
# configs/spd_lm.py's options.
SPD_LM = dict(n_components=192, importance_coeff=3e-4, importance_p=1.0,
              faithfulness_coeff=1e6, recon="kl", gate_hidden=16)
CASES = [
    Case("tms_5_2", "tms", TMS_5_2, 2048, dict(
        n_components=5, rank=3, topk=0.211, simplicity_coeff=0.7,
        attribution_point="components")),
    Case("tms_40_10", "tms", TMS_40_10, 2048, dict(
        n_components=50, rank=11, topk=1.0, minimality_coeff=10.0,
        simplicity_coeff=20.0, schatten_p=0.9)),
    Case("resid_mlp_1_m50", "resid_mlp", ONE_LAYER, 2048, dict(
        RESID, n_components=130, rank=None, unit_norm_matrices=True)),
    Case("resid_mlp_1_m1", "resid_mlp", ONE_LAYER, 2048, dict(
        RESID, n_components=130, rank=1, unit_norm_matrices=True)),
    Case("resid_mlp_1_m1_proj10", "resid_mlp", ONE_LAYER, 2048, dict(
        RESID, n_components=130, rank=1, unit_norm_matrices=True,
        attribution_projections=10)),
    Case("resid_mlp_2_m25", "resid_mlp", TWO_LAYERS, 2048, dict(
        RESID, n_components=200, rank=None, minimality_coeff=2.0,
        simplicity_coeff=7.0)),
    Case("resid_mlp_2_m1", "resid_mlp", TWO_LAYERS, 2048, dict(
        RESID, n_components=200, rank=1, minimality_coeff=2.0,
        simplicity_coeff=7.0)),
    Case("lm_per_position", "lm", (), 4, dict(LM_OPTIONS, per_position=True)),
    Case("lm_window", "lm", (), 4, dict(LM_OPTIONS, factored=True)),
    Case("lm_window_dense", "lm", (), 4, dict(LM_OPTIONS, factored=False)),
    # SPD with the options of configs/spd_*.py (the others at SPD's
    # defaults: β1 = β2 = 1).
    Case("spd_tms_5_2", "tms", TMS_5_2, 4096, dict(
        n_components=20, importance_coeff=3e-3, importance_p=1.0,
        gate_hidden=16), method="spd"),
    Case("spd_tms_40_10", "tms", TMS_40_10, 4096, dict(
        n_components=200, importance_coeff=1e-4, importance_p=2.0,
        gate_hidden=16), method="spd"),
    Case("spd_resid_mlp_1", "resid_mlp", ONE_LAYER, 2048, dict(
        n_components=100, importance_coeff=1e-5, importance_p=2.0,
        gate_hidden=16), method="spd"),
    Case("spd_resid_mlp_2", "resid_mlp", TWO_LAYERS, 2048, dict(
        n_components=400, importance_coeff=1e-5, importance_p=2.0,
        gate_hidden=16), method="spd"),
    Case("spd_lm", "lm", (), 8, SPD_LM, method="spd"),
    # The same with VPD's building blocks: subset routing for the β2 term,
    # and an MLP per matrix on its input for the causal importances.
    Case("spd_lm_subset", "lm", (), 8, dict(
        SPD_LM, layerwise_routing="subset"), method="spd"),
    Case("spd_lm_subset_layerwise", "lm", (), 8, dict(
        SPD_LM, layerwise_routing="subset", ci_fn="layerwise"),
         method="spd"),
    # VPD with the options of configs/vpd_lm.py.
    Case("vpd_lm", "lm", (), 8, dict(
        n_components=192, recon="kl", ci_fn="transformer", ci_d_model=64,
        ci_blocks=2, ci_heads=4, ci_hidden=(256,), ci_lr_scale=1 / 3,
        grad_clip=0.01, faithfulness_warmup_steps=0), method="vpd"),
]
QUICK = ("tms_5_2", "resid_mlp_1_m1", "spd_tms_5_2")


def config_case(name: str, c, runs: int = 1) -> Case:
  """The case of a config (`configs/*.py`'s `get_config()`): its target,
  batch size, decomposed leaves and method options as they are."""
  module = targets.get(c.target.name)
  cls = methods.get(c.method.name)
  return Case(name, c.target.name,
              tuple((k, c.target[k]) for k in module.ARCH), c.batch_size,
              {k: c.method[k] for k in config_lib.option_names(cls)},
              method=c.method.name, include=c.include,
              data=tuple((k, c.target[k]) for k in module.SAMPLER
                         if k in c.target), runs=runs,
              train_steps=c.steps)


def sweep_cases(names, seeds: int, configs: str = CONFIGS,
                entries=None) -> list[Case]:
  """The scoreboard entries `names` (or every entry of a method named
  there; `entries`: from these instead of `scoreboard.ENTRIES`) as sweeps
  over `seeds` runs, with the values each entry sets on its config."""
  entries = scoreboard.ENTRIES if entries is None else entries
  chosen = [e for e in entries if e.name in names or e.method in names]
  known = {e.name for e in entries} | {e.method for e in entries}
  unknown = sorted(set(names) - known)
  if unknown:
    raise ValueError(f"unknown scoreboard entries {unknown}; known: "
                     f"{sorted(known)}")
  return [config_case(e.name, scoreboard.entry_config(e, configs, seeds,
                                                      quick=False), seeds)
          for e in chosen]


def family_cases(method: str, seeds: int, configs: str = CONFIGS
                 ) -> list[Case]:
  """Every member of `method`'s family as a sweep over `seeds` runs."""
  return sweep_cases([method], seeds, configs,
                     entries=family.family(method, configs))
