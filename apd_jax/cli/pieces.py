"""A campaign's finished pieces, kept where a fresh machine finds them.

    pieces.record(folder, name, seeds, config, sweep, runs, meta, command)
    pieces.find(folder, name, seeds, config)   # (sweep, runs) or None

A scoreboard entry trained in sweeps of a few seeds (`--seeds_per_sweep`)
finishes one sweep at a time. Each finished sweep's record, its config,
`sweep.json` and the runs' summaries without their per-component table,
is a small JSON file `<folder>/<entry>/seeds_<a>-<b>.json`. Committed with
the results, it lets a machine that lost the workdirs score the sweep
without training it again: a sweep is read back from its record when the
config it was trained with has the settings of the one asked for
(`workdir.settings_match`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from apd_jax.cli import workdir as workdir_lib


def path(folder: str, name: str, seeds: tuple[int, ...]) -> str:
  """Where the record of `name`'s sweep over `seeds` lives."""
  return os.path.join(folder, name.replace(":", "_"),
                      f"seeds_{seeds[0]}-{seeds[-1]}.json")


def kept(summary: dict[str, Any] | None) -> dict[str, Any] | None:
  """What scoring reads of a run's summary: all but the per-component
  table (`components`, 46 kB of a residual MLP's 47) and other lists, the
  gated functions' recoveries excepted."""
  if summary is None:
    return None
  return {k: v for k, v in summary.items() if k != "components" and (
      not isinstance(v, list) or k == "function_recovery")}


def record(folder: str, name: str, seeds: tuple[int, ...],
           config: ml_collections.ConfigDict, sweep: dict[str, Any],
           runs: list[dict[str, Any] | None], meta: dict[str, Any],
           command: str) -> str:
  """Writes the finished sweep's record; returns its path."""
  out = path(folder, name, seeds)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  rec = dict(entry=name, seeds=list(seeds), date=meta["date"],
             jax=meta["jax"], devices=meta["devices"], command=command,
             config=json.loads(config.to_json_best_effort()), sweep=sweep,
             runs=[kept(r) for r in runs])
  with open(out, "w") as f:
    json.dump(rec, f, indent=1, sort_keys=True)
    f.write("\n")
  return out


def find(folder: str, name: str, seeds: tuple[int, ...],
         config: ml_collections.ConfigDict
         ) -> tuple[dict[str, Any], list[dict[str, Any] | None]] | None:
  """`(sweep, runs)` of the record of `name` over `seeds` trained with
  `config`'s settings; None if there is none (or it is of others)."""
  where = path(folder, name, seeds)
  if not os.path.exists(where):
    return None
  with open(where) as f:
    rec = json.load(f)
  if rec["seeds"] != list(seeds) or not workdir_lib.settings_match(
      rec["config"], config):
    return None
  return rec["sweep"], rec["runs"]
