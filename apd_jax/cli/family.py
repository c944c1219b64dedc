"""A family of targets no config ships, to choose a method's defaults on.

The paper's configs are tuned on their own targets; a user's model is none of
them. The family is toy models of the same kinds at other sizes, each seed
training its own target (`scoreboard`'s sweeps over seeds):

  TMS F-h        F features into h hidden dimensions, at four sizes between
                 5-2 and 40-10 with feature/hidden ratios 2.5 to 5, each
                 also with an identity hidden layer (`:identity`);
  resid_mlp_F    the 1-layer residual MLP scaled down from the paper's
                 (100 features, residual 1000, MLP 50) at its ratios.

A member's settings come from its kind's paper config for the method (TMS:
`<prefix>tms_5_2`, residual MLP: `<prefix>resid_mlp_1`; the prefix as in
`scoreboard.FAMILIES`) with the number of components scaled with the
number of features as that config has it (SPD on TMS 5-2: C = 4 F; on the
residual MLP: C = F) and `overrides` on top. Success is the scoreboard's
rule for the kind: TMS by MMCS and ML2R, the residual MLP with every
feature recovered (`F of F`).
"""

from __future__ import annotations

import math
from typing import Any

from apd_jax.cli import scoreboard

# (features, hidden) of the TMS members.
TMS_SIZES = ((10, 4), (15, 4), (20, 5), (30, 6))
# (features, residual width, MLP width) of the residual-MLP members.
RESID_SIZES = ((50, 500, 25), (25, 250, 13))
# The paper configs' features (TMS 5-2; the residual MLP's 100).
BASE_FEATURES = {"tms": 5, "resid_mlp": 100}


def family(method: str, configs: str,
           overrides: dict[str, Any] | None = None
           ) -> tuple[scoreboard.Entry, ...]:
  """The family's entries for `method` (a name of `scoreboard.FAMILIES`),
  with the config values `overrides` (dotted keys) on every member."""
  prefix, tms_rule, own = _family_of(method)
  extra = tuple(sorted((overrides or {}).items()))
  out = []
  for f, h in TMS_SIZES:
    base = scoreboard.load_config(configs, prefix + "tms_5_2", None)
    for arg in (None, "identity"):
      sizes = (("target.n_features", f), ("target.n_hidden", h),
               ("method.n_components", _scaled(base, "tms", f)))
      out.append(scoreboard.Entry(
          f"tms_{f}_{h}" + (":" + arg if arg else ""), method,
          prefix + "tms_5_2", arg, *tms_rule, ("mmcs", "ml2r"),
          overrides=sizes + extra))
  for f, d_resid, d_mlp in RESID_SIZES:
    base = scoreboard.load_config(configs, prefix + "resid_mlp_1", None)
    sizes = (("target.n_features", f), ("target.d_resid", d_resid),
             ("target.d_mlp", d_mlp),
             ("method.n_components", _scaled(base, "resid_mlp", f)))
    out.append(scoreboard.Entry(
        f"resid_mlp_{f}_{d_resid}_{d_mlp}", method, prefix + "resid_mlp_1",
        None, f"{own} = {f} of {f}", _all(own, f), (own,),
        overrides=sizes + extra))
  return tuple(out)


def _family_of(method: str):
  for prefix, name, tms_rule, own in scoreboard.FAMILIES:
    if name == method:
      return prefix, tms_rule, own
  known = [name for _, name, _, _ in scoreboard.FAMILIES]
  raise ValueError(f"method {method!r} has no paper configs to scale; "
                   f"known: {known}")


def _scaled(base, kind: str, features: int) -> int:
  """C of the member: the base config's C per feature, times `features`."""
  per = base.method.n_components / BASE_FEATURES[kind]
  return max(1, math.ceil(per * features))


def _all(key: str, n: int):
  return lambda s: s[key] >= n


def run(workdir: str, configs: str, method: str, seeds: int, *,
        names: list[str] | None = None, quick: bool = False,
        overrides: dict[str, Any] | None = None,
        checkpoint_every: int | None = None,
        per_sweep: int | None = None, results_dir: str | None = None,
        command: str = "") -> list[dict]:
  """Every member (or those in `names`) as resumable sweeps over seeds
  (`per_sweep` at a time; None: all) in `workdir/<member>`; the table
  (`scoreboard.md`, `.json`, `.csv`) is rewritten after each member. With
  `results_dir`, each finished member's row and each finished sweep's
  record go there (as the scoreboard's, `scoreboard.run`). Returns the
  rows."""
  entries = family(method, configs, overrides)
  return scoreboard.run(workdir, configs, list(names or ()), seeds, quick,
                        checkpoint_every=checkpoint_every, entries=entries,
                        per_sweep=per_sweep, results_dir=results_dir,
                        command=command)


def describe(entries: tuple[scoreboard.Entry, ...]) -> list[dict]:
  """Each member's name and the values it sets (for the docs and logs)."""
  return [dict(name=e.name, **dict(e.overrides)) for e in entries]

