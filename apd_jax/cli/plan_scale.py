r"""Plans an SPD run on a language model too large for one device: its train
step compiled ahead of time on a simulated mesh, no weight allocated.

  python scripts/plan_scale.py                      # 1B and 8B, ~8 min
  python scripts/plan_scale.py --shapes=1b --devices=8 --scopes=layer
  python scripts/plan_scale.py --shapes=1b --devices=8 --exact   # slow

For a decoder-only transformer (`models/transformer.py`) of a given shape,
SPD decomposes the first block's MLP (`layer`: its `mlp_in` and `mlp_out`)
or every block's (`mlp`) with C = 4 · d_model subcomponents per matrix and
KL on the logits. Each case runs in a process of its own whose `XLA_FLAGS`
simulate that many CPU devices; there the step is lowered on abstract
arguments (`jax.ShapeDtypeStruct`s that carry their shardings) and
compiled, and XLA's plan gives the memory each device needs (arguments,
outputs, temporaries) and the FLOPs each device does per step.

Where each array lives on the `data × component` mesh (`MESHES`):

  target's params       each leaf on its largest axis divisible by the
                        number of devices, over all of them (FSDP,
                        `sharding.fsdp`); XLA gathers them where used
  factors U, V, causal-importance MLPs, Adam's moments
                        C axis over `component` (`sharding.train_state`)
  tokens [B, T] and every per-example array
                        B over `data`
  step, key, metrics    replicated

A step's size grows with the depth L: each of the K decomposed matrices
has its own masked pass through the whole model (SPD's layerwise term), so
decomposing every MLP (K = 2L) makes a program of O(L²) operations: on 2
CPU cores XLA took 12 to 35 minutes to compile it for the 1B model (8
devices), and the 8B model has 4 times as many. Those cases (`FITTED`) are
therefore compiled at the depths `DEPTHS` with the same widths and
extrapolated to the full depth: FLOPs quadratically (0.01% from the full
compile on 1B), memory linearly (an estimate: 2% below it; see
docs/scale_out.md). `--exact` compiles them at the full depth too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from apd_jax import methods
from apd_jax.core import selection
from apd_jax.core.target import Target
from apd_jax.engine import api
from apd_jax.methods import ci_functions
from apd_jax.models import transformer
from apd_jax.models.transformer import TransformerConfig
from apd_jax.training import sharding
from apd_jax.training import train
from apd_jax.training.options import Training

FLAGS = flags.FLAGS
# Llama-3.2-1B's and Llama-3-8B's widths, depths and vocabulary, in this
# library's transformer (a GELU MLP of 2 matrices rather than SwiGLU's 3,
# multi-head rather than grouped-query attention, learned positions): 1.07B
# (tied embedding) and 6.96B parameters at T = 512.
SHAPES = {
    "tiny": TransformerConfig(vocab=64, n_layers=2, d_model=32, n_heads=2,
                              d_mlp=64, context=8, tied=False),
    "1b": TransformerConfig(vocab=128256, n_layers=16, d_model=2048,
                            n_heads=32, d_mlp=8192, tied=True),
    "8b": TransformerConfig(vocab=128256, n_layers=32, d_model=4096,
                            n_heads=32, d_mlp=14336, tied=False),
}
SCOPES = {"layer": r"block_0'\]\['mlp_(in|out)'\]\['kernel",
          "mlp": r"mlp_(in|out)'\]\['kernel"}
# Scopes planned by a fit over `DEPTHS` unless --exact (the others are
# compiled at their full depth).
FITTED = ("mlp",)
DEPTHS = (1, 2, 3)
# Devices -> (data, component).
MESHES = {1: (1, 1), 8: (2, 4), 32: (4, 8), 256: (16, 16)}
MEMORY = ("argument", "output", "alias", "temp")
MARK = "plan_scale: "


def define_flags() -> None:
  """The command line's flags (defined on use, so importing is free)."""
  flags.DEFINE_list("shapes", ["1b", "8b"], f"Model shapes {list(SHAPES)}.")
  flags.DEFINE_list("scopes", ["layer", "mlp"], "What SPD decomposes: "
                    "'layer' (block 0's MLP), 'mlp' (every block's).")
  flags.DEFINE_list("devices", ["8", "32", "256"], "Simulated devices; "
                    f"the mesh (data, component) of each: {MESHES}.")
  flags.DEFINE_integer("batch_size", 16, "Sequences per step (B).")
  flags.DEFINE_integer("seq_len", 512, "Tokens per sequence (T).")
  flags.DEFINE_bool("exact", False, f"Compile the scopes {FITTED} at the "
                    f"full depth too instead of fitting depths {DEPTHS} "
                    "(12-35 min for 1b on 2 cores).")
  flags.DEFINE_integer("timeout", 1800, "Seconds allowed each compile.")
  flags.DEFINE_string("case", "", "Internal: plan SHAPE,SCOPE,DEVICES,DEPTH "
                      "in this process and print it as JSON.")


def method_for(config: TransformerConfig) -> Any:
  """SPD with C = 4 · d_model per matrix and KL on the logits."""
  return methods.get("spd")(n_components=4 * config.d_model,
                            importance_coeff=1e-4, recon="kl")


def sampler(config: TransformerConfig):
  """`sample_fn(key, n)`: uniform random tokens `[n, context]` (the cost
  does not depend on them)."""
  return lambda key, n: jax.random.randint(key, (n, config.context), 0,
                                           config.vocab)


def lm_apply(config: TransformerConfig):
  return lambda params, tokens: transformer.apply(params, tokens, config)


def make_step(method: Any, apply_fn, names: tuple[str, ...], sample_fn,
              batch_size: int, optimizer, mesh=None, steps: int | None = None):
  """`step(target_params, state, key) -> (state, metrics)`: the library's
  train step with the target's params an argument, not a constant of the
  program, so that they can be sharded."""

  def step(target_params, state, key):
    target = Target(apply_fn, target_params, names)
    plan = method.plan(target, sample_fn, batch_size, None)
    return train.make_train_step(method, plan, target, sample_fn,
                                 batch_size, optimizer, mesh,
                                 steps=steps)(state, key)

  return step


def make_init(method: Any, apply_fn, names: tuple[str, ...], sample_fn,
              optimizer):
  """`init(target_params, key) -> TrainState`, step 0 (traceable)."""
  def init(target_params, key):
    target = Target(apply_fn, target_params, names)
    return train.TrainState.create(
        method.init_params(key, target, sample_fn), optimizer)
  return init


def step_shardings(mesh, target_params: Any, state: Any, optimizer):
  """`(in_shardings, out_shardings)` of `make_step`'s step."""
  state_s = sharding.train_state(mesh, state, optimizer)
  rep = sharding.replicated(mesh)
  return ((sharding.fsdp(mesh, target_params), state_s, rep),
          (state_s, rep))


def compile_step(config: TransformerConfig, scope: str, mesh, *,
                 batch_size: int):
  """The step of `config` with `scope` decomposed, compiled over `mesh`
  from abstract arguments (the causal-importance MLPs in the plain form an
  accelerator runs, whose work XLA counts in full)."""
  apply_fn, sample_fn = lm_apply(config), sampler(config)
  params = jax.eval_shape(lambda k: transformer.init(k, config),
                          jax.random.PRNGKey(0))
  names = selection.select_leaves(params, SCOPES[scope])
  method = method_for(config)
  optimizer = api.optimizer(method, Training(batch_size=batch_size))
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  with ci_functions.unblocked():
    state = jax.eval_shape(
        make_init(method, apply_fn, names, sample_fn, optimizer), params, key)
    ins, outs = step_shardings(mesh, params, state, optimizer)
    args = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        (params, state, key), ins)
    step = make_step(method, apply_fn, names, sample_fn, batch_size,
                     optimizer, mesh)
    lowered = jax.jit(step, in_shardings=ins, out_shardings=outs,
                      donate_argnums=1).lower(*args)
  return lowered.compile(), params, state


def plan(config: TransformerConfig, scope: str, mesh, *,
         batch_size: int) -> dict[str, Any]:
  """Per device: bytes of arguments, outputs, outputs aliased to (donated)
  arguments and temporaries, and the step's FLOPs; with the target's and
  the trained parameter counts and the compile's seconds."""
  t0 = time.perf_counter()
  compiled, params, state = compile_step(config, scope, mesh,
                                         batch_size=batch_size)
  out = dict(compile_s=time.perf_counter() - t0, **memory_and_flops(compiled))
  out["params"] = _count(params)
  out["trained"] = _count(state.components)
  return out


def memory_and_flops(compiled) -> dict[str, float]:
  """XLA's plan of a compiled step, per device."""
  m = compiled.memory_analysis()
  out = {k: float(getattr(m, f"{k}_size_in_bytes")) for k in MEMORY}
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out["flops"] = float(cost.get("flops", 0.0))
  return out


def total(row: dict[str, float]) -> float:
  """Bytes a device holds at the peak: arguments, outputs not written
  over donated arguments, and temporaries."""
  return row["argument"] + row["output"] - row["alias"] + row["temp"]


def _count(tree) -> int:
  return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))


def at_depth(config: TransformerConfig, depth: int) -> TransformerConfig:
  """`config` with `depth` blocks."""
  return dataclasses.replace(config, n_layers=depth)


def run_case(shape: str, scope: str, devices: int, depth: int, *,
             batch_size: int, seq_len: int, timeout: float) -> dict:
  """`plan` in a new process that simulates `devices` CPU devices."""
  # The worker imports this process's apd_jax, wherever that is.
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={devices}"),
      PYTHONPATH=os.pathsep.join(
          [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
  cmd = [sys.executable, "-m", "apd_jax.cli.plan_scale",
         f"--case={shape},{scope},{devices},{depth}",
         f"--batch_size={batch_size}", f"--seq_len={seq_len}"]
  try:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return dict(error=f"compile over {timeout:.0f} s")
  for line in done.stdout.splitlines():
    if line.startswith(MARK):
      return json.loads(line[len(MARK):])
  last = done.stderr.strip().splitlines()[-1:]
  return dict(error=last[0] if last else f"exit status {done.returncode}")


def fit(depths, rows: list[dict], depth: int) -> dict:
  """Each quantity of `rows` (planned at `depths`) extrapolated to `depth`
  by a least-squares polynomial: quadratic for the FLOPs (2L masked passes
  of L blocks), linear for the rest."""
  out = {}
  for k in (*MEMORY, "flops", "params", "trained"):
    degree = 2 if k == "flops" else 1
    coef = np.polyfit(np.asarray(depths, float),
                      [r[k] for r in rows], degree)
    out[k] = float(np.polyval(coef, depth))
  out["compile_s"] = sum(r["compile_s"] for r in rows)
  return out


def plan_case(shape: str, scope: str, devices: int, *, batch_size: int,
              seq_len: int, exact: bool, timeout: float) -> dict:
  """One row of the table: compiled at the full depth, or for a scope in
  `FITTED` (unless `exact`) fitted from `DEPTHS`."""
  full = SHAPES[shape].n_layers
  fitted = scope in FITTED and not exact and full > max(DEPTHS)
  depths = DEPTHS if fitted else (full,)
  rows = []
  for d in depths:
    r = run_case(shape, scope, devices, d, batch_size=batch_size,
                 seq_len=seq_len, timeout=timeout)
    if "error" in r:
      return r
    rows.append(r)
  if len(rows) == 1:
    return dict(rows[0], how="compiled")
  return dict(fit(depths, rows, full),
              how=f"fit {','.join(map(str, depths))}")


def table(rows: list[tuple[str, str, int, dict]], batch_size: int,
          seq_len: int) -> str:
  """The plans as a markdown table (GiB and TFLOP per device)."""
  gib = 1 << 30
  lines = [f"B = {batch_size} sequences × T = {seq_len} tokens per step; "
           "per device: memory in GiB, FLOPs in TFLOP",
           "| shape | params | decomposed | trained | devices | data × "
           "component | argument | output | temp | total | TFLOP | how | "
           "compile s |", "|" + "---|" * 13]
  for shape, scope, devices, r in rows:
    d, c = MESHES[devices]
    if "error" in r:
      lines.append(f"| {shape} | | {scope} | | {devices} | {d} × {c} | "
                   f"{r['error']} |" + " |" * 7)
      continue
    lines.append(
        f"| {shape} | {r['params'] / 1e9:.2f}B | {scope} | "
        f"{r['trained'] / 1e9:.2f}B | {devices} | {d} × {c} | "
        + " | ".join(f"{r[k] / gib:.2f}" for k in ("argument", "output",
                                                   "temp"))
        + f" | {total(r) / gib:.2f} | {r['flops'] / 1e12:.1f} | {r['how']} | "
        f"{r['compile_s']:.0f} |")
  return "\n".join(lines)


def worker(case: str, batch_size: int, seq_len: int) -> None:
  """Plans `case` ('SHAPE,SCOPE,DEVICES,DEPTH') on this process's devices
  and prints it as one JSON line after `MARK`."""
  shape, scope, devices, depth = case.split(",")
  if jax.device_count() != int(devices):
    raise SystemExit(f"{jax.device_count()} devices, not {devices}: set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count="
                     f"{devices} before jax starts")
  config = dataclasses.replace(at_depth(SHAPES[shape], int(depth)),
                               context=seq_len)
  mesh = sharding.make_mesh(*MESHES[int(devices)])
  print(MARK + json.dumps(plan(config, scope, mesh, batch_size=batch_size)),
        flush=True)


def main(argv):
  del argv
  if FLAGS.case:
    worker(FLAGS.case, FLAGS.batch_size, FLAGS.seq_len)
    return
  unknown = [d for d in FLAGS.devices if int(d) not in MESHES]
  if unknown or set(FLAGS.shapes) - set(SHAPES) or set(FLAGS.scopes) - set(
      SCOPES):
    raise app.UsageError(f"--devices from {list(MESHES)}, --shapes from "
                         f"{list(SHAPES)}, --scopes from {list(SCOPES)}")
  t0, rows = time.perf_counter(), []
  for shape in FLAGS.shapes:
    for scope in FLAGS.scopes:
      for devices in map(int, FLAGS.devices):
        r = plan_case(shape, scope, devices, batch_size=FLAGS.batch_size,
                      seq_len=FLAGS.seq_len, exact=FLAGS.exact,
                      timeout=FLAGS.timeout)
        rows.append((shape, scope, devices, r))
        print(table(rows[-1:], FLAGS.batch_size, FLAGS.seq_len)
              .splitlines()[-1], file=sys.stderr, flush=True)
  print(table(rows, FLAGS.batch_size, FLAGS.seq_len))
  print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  define_flags()
  app.run(main)
