r"""Speed of the APD train step on the paper's targets, against the machine.

  python -m apd_jax.cli.benchmark --out=/tmp/bench          # ~12 min on 2 cores
  python -m apd_jax.cli.benchmark --quick --out=/tmp/bench  # < 1 min
  python -m apd_jax.cli.benchmark \
      --only=lm_per_position,lm_window,lm_window_dense     # ~2 min

For each case (paper batch size and C) it prints and writes to
`<out>/benchmark.json`: compile seconds, steady-state steps/s and examples/s,
XLA's planned memory for the compiled step, the step's FLOPs from XLA's cost
analysis, the achieved GFLOP/s, and this machine's dense matmul GFLOP/s
measured in the same run, so the ratio to the hardware is visible. Without
`--quick` it also times how the step grows with C, batch size and layer
width (`<out>/scaling.json`, `<out>/scaling.png`). Targets are freshly
initialised, not trained: the cost does not depend on the weights' values.

The `lm_*` cases are the default transformer (2 layers, d_model 128,
windows of 128 bytes) with all 12 matrices decomposed (C 32, rank 16, KL):
per position (`per_position=True`, factored), and one mask per window in
factored form against the dense form with `[C, i, o]` component weights;
their examples are windows, and `tokens/s` counts positions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
from absl import app
from absl import flags

from apd_jax import methods
from apd_jax.engine import api
from apd_jax.models import transformer
from apd_jax.targets import lm
from apd_jax.targets import resid_mlp
from apd_jax.targets import tms
from apd_jax.training import cpu
from apd_jax.training import train
from apd_jax.training.options import Training

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined on use, so importing is free)."""
  flags.DEFINE_bool("quick", False, "Small step counts; no scaling sweep.")
  flags.DEFINE_string("out", "", "Directory for the JSON files and figure.")
  flags.DEFINE_integer("steps", 0, "Timed steps per case (0: automatic).")
  flags.DEFINE_list("only", [], "Run only these cases (names, comma-"
                    "separated); no scaling sweep.")


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  target: str            # 'tms', 'resid_mlp' or 'lm'
  dims: tuple            # model dimensions, as keyword pairs
  n_components: int
  rank: int | None
  batch_size: int
  settings: dict         # the method's options
  projections: int = 0
  method: str = "apd"    # the registered method's name


RESID = dict(topk=1.28, hidden_act_coeff=1.0, hidden_acts="post_relu",
             schatten_p=0.9, simplicity_coeff=10.0)
LM_OPTIONS = dict(topk=2.0, recon="kl", simplicity_coeff=1.0, schatten_p=0.9)
CASES = [
    Case("tms_5_2", "tms", (("n_features", 5), ("n_hidden", 2)), 5, 3, 2048,
         dict(topk=0.211, simplicity_coeff=0.7,
              attribution_point="components")),
    Case("tms_40_10", "tms", (("n_features", 40), ("n_hidden", 10)), 50, 11,
         2048, dict(topk=1.0, minimality_coeff=10.0, simplicity_coeff=20.0,
                    schatten_p=0.9)),
    Case("resid_mlp_1_m50", "resid_mlp", (("n_layers", 1),), 130, None, 2048,
         dict(RESID, unit_norm_matrices=True)),
    Case("resid_mlp_1_m1", "resid_mlp", (("n_layers", 1),), 130, 1, 2048,
         dict(RESID, unit_norm_matrices=True)),
    Case("resid_mlp_1_m1_proj10", "resid_mlp", (("n_layers", 1),), 130, 1,
         2048, dict(RESID, unit_norm_matrices=True), projections=10),
    Case("resid_mlp_2_m25", "resid_mlp", (("n_layers", 2),), 200, None, 2048,
         dict(RESID, minimality_coeff=2.0, simplicity_coeff=7.0)),
    Case("resid_mlp_2_m1", "resid_mlp", (("n_layers", 2),), 200, 1, 2048,
         dict(RESID, minimality_coeff=2.0, simplicity_coeff=7.0)),
    Case("lm_per_position", "lm", (), 32, 16, 4,
         dict(LM_OPTIONS, per_position=True)),
    Case("lm_window", "lm", (), 32, 16, 4, dict(LM_OPTIONS, factored=True)),
    Case("lm_window_dense", "lm", (), 32, 16, 4,
         dict(LM_OPTIONS, factored=False)),
]


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
  """Dense f32 `n×n @ n×n` throughput of the default device."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def build(case: Case):
  """`(step_fn, state, plan, sample_fn)` for a case, through the public
  building blocks (the plan as `decompose` derives it)."""
  dims = dict(case.dims)
  if case.target == "tms":
    params = tms.init(jax.random.PRNGKey(0), **dims)
    target = api.make_target(tms.apply, params, "W", log=False)
    sample = tms.sampler(n_features=dims["n_features"],
                         feature_probability=0.05)
  elif case.target == "lm":
    config = transformer.TransformerConfig(**dims)
    params = transformer.init(jax.random.PRNGKey(0), config)
    sample = lambda k, n: jax.random.randint(  # noqa: E731
        k, (n, config.context), 0, config.vocab)
    target = api.make_target(
        lambda p, x: transformer.apply(p, x, config), params, lm.INCLUDE,
        log=False, sample_fn=sample)
  else:
    params = resid_mlp.init(jax.random.PRNGKey(0), **dims)
    target = api.make_target(resid_mlp.apply, params, "W_in|W_out",
                             has_aux=True, log=False)
    sample = resid_mlp.sampler(n_features=dims.get("n_features", 100),
                               feature_probability=0.01)
  method = methods.get(case.method)(
      n_components=case.n_components, rank=case.rank,
      attribution_projections=case.projections, **case.settings)
  training = Training(batch_size=case.batch_size, progress=False)
  state = api.init_state(method, target, training, seed=1)
  plan = method.plan(target, sample, case.batch_size, state.components)
  step = api.make_train_step(method, plan, target, sample, training)
  return step, state, plan, sample


def measure(case: Case, steps: int) -> dict:
  """Compile time, steps/s, memory and FLOPs of one case's step."""
  step, state, plan, sample = build(case)
  key = jax.random.PRNGKey(2)
  single = jax.jit(step, compiler_options=dict(
      cpu.compiler_options())).lower(state, key).compile()
  cost = single.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = single.memory_analysis()
  run = train.make_runner(step)
  t = time.perf_counter()
  state, m = run(state, key, steps)
  jax.block_until_ready(m)
  first = time.perf_counter() - t
  t = time.perf_counter()
  state, m = run(state, key, steps)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / steps
  flops = float(cost.get("flops", float("nan")))
  planned = sum(getattr(mem, a, 0) or 0 for a in (
      "temp_size_in_bytes", "argument_size_in_bytes",
      "output_size_in_bytes")) if mem is not None else float("nan")
  x = jax.eval_shape(lambda k: sample(k, 1), key)
  tokens = case.batch_size * (x.shape[1] if case.target == "lm" else 1)
  return dict(case=case.name, batch_size=case.batch_size,
              n_components=case.n_components, rank=case.rank,
              projections=case.projections,
              attribution=f"{plan.attribution_mode} "
                          f"{plan.attribution_contract}",
              compile_s=max(first - steps * dt, 0.0), step_s=dt,
              steps_per_s=1 / dt, examples_per_s=case.batch_size / dt,
              tokens_per_s=tokens / dt,
              gflop_per_step=flops / 1e9, gflops=flops / dt / 1e9,
              memory_mib=planned / 2 ** 20)


def scaling(steps: int) -> list[dict]:
  """Step time of the 1-layer residual MLP (rank 1) as C, batch size and
  `d_resid` vary one at a time around the paper's setting."""
  base = CASES[3]
  rows = []
  grid = [("n_components", v) for v in (32, 64, 130, 260)]
  grid += [("batch_size", v) for v in (256, 512, 1024, 2048)]
  grid += [("d_resid", v) for v in (250, 500, 1000, 2000)]
  for what, value in grid:
    if what == "d_resid":
      case = dataclasses.replace(base, dims=(("n_layers", 1),
                                             ("d_resid", value)))
    else:
      case = dataclasses.replace(base, **{what: value})
    row = measure(dataclasses.replace(case, name=f"{what}={value}"), steps)
    rows.append(dict(row, vary=what, value=value))
    print(f"  {what:13s} {value:6d}  {row['step_s'] * 1e3:8.1f} ms/step",
          flush=True)
  return rows


def plot_scaling(rows: list[dict], path: str) -> None:
  from apd_jax.analysis import plotting  # noqa: PLC0415
  from apd_jax.analysis.plotting import plt  # noqa: PLC0415
  whats = ("n_components", "batch_size", "d_resid")
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
  for ax, what in zip(axes, whats, strict=True):
    sel = [r for r in rows if r["vary"] == what]
    ax.plot([r["value"] for r in sel], [r["step_s"] * 1e3 for r in sel], "o-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"{what} (log scale)")
    ax.set_ylabel("ms per training step (log scale)")
  plotting.titled(fig, "Time of one training step as each size grows: "
                       "1-layer residual MLP, rank 1",
                  ("one size varied per panel, the others at C 130, batch "
                   "2048, d_resid 1000",))
  plotting.save(fig, path)


def main(argv):
  del argv
  run(quick=FLAGS.quick, out=FLAGS.out, steps=FLAGS.steps, only=FLAGS.only)


def run(*, quick: bool = False, out: str = "", steps: int = 0,
        only: list[str] | tuple = ()) -> dict:
  """Measures every case (`only`: the named ones; and, unless `quick` or
  `only`, the scaling); prints the table, writes JSON (and the figure) to
  `out` if given; returns the results."""
  cpu.apply_tweaks()   # as a run starting on this machine does
  names = [c.name for c in CASES]
  unknown = sorted(set(only) - set(names))
  if unknown:
    raise ValueError(f"unknown benchmark cases {unknown}; known: {names}")
  steps = steps or (3 if quick else 10)
  peak = matmul_gflops()
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}; dense "
        f"matmul {peak:.1f} GFLOP/s")
  cases = CASES[:1] + CASES[3:4] if quick else CASES
  if only:
    cases = [c for c in CASES if c.name in only]
  rows = []
  header = (f"{'case':22s} {'compile s':>9s} {'steps/s':>8s} {'ex/s':>9s} "
            f"{'tokens/s':>9s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} "
            f"{'% matmul':>8s} {'MiB':>7s}  attribution")
  print(header)
  for case in cases:
    r = measure(case, steps)
    r["matmul_fraction"] = r["gflops"] / peak
    rows.append(r)
    print(f"{r['case']:22s} {r['compile_s']:9.1f} {r['steps_per_s']:8.2f} "
          f"{r['examples_per_s']:9.0f} {r['tokens_per_s']:9.0f} "
          f"{r['gflop_per_step']:10.2f} "
          f"{r['gflops']:8.1f} {100 * r['matmul_fraction']:7.1f}% "
          f"{r['memory_mib']:7.0f}  {r['attribution']}", flush=True)
  result = dict(jax=jax.__version__, device=jax.devices()[0].device_kind,
                matmul_gflops=peak, cases=rows)
  if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "benchmark.json"), "w") as f:
      json.dump(result, f, indent=2)
  if not quick and not only:
    print("scaling (resid_mlp_1_m1):")
    result["scaling"] = scaling(max(steps // 2, 2))
    if out:
      with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump(result["scaling"], f, indent=2)
      plot_scaling(result["scaling"], os.path.join(out, "scaling.png"))
  return result


if __name__ == "__main__":
  define_flags()
  app.run(main)
