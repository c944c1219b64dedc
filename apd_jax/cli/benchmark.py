r"""Speed of the APD and SPD train steps on the paper's targets, against the
machine's limit.

  python -m apd_jax.cli.benchmark --out=/tmp/bench          # ~20 min on 2 cores
  python -m apd_jax.cli.benchmark --quick --out=/tmp/bench  # < 1 min
  python -m apd_jax.cli.benchmark --method=spd              # the SPD cases
  python -m apd_jax.cli.benchmark \
      --only=lm_per_position,lm_window,lm_window_dense     # ~2 min
  python -m apd_jax.cli.benchmark --sweeps=spd --seeds=10   # the scoreboard
  python -m apd_jax.cli.benchmark --family=spd --seeds=5    # the family
  python -m apd_jax.cli.benchmark --only=spd_tms_40_10 \
      --reference='PYTHON TIMER --case={case}'   # beside a reference

For each case (paper batch size and C) it prints and writes to
`<out>/benchmark.json`, after each case: compile seconds, steady-state
steps/s and examples/s, XLA's planned memory for the compiled step, XLA's
cost analysis of the step (FLOPs, transcendentals, bytes accessed), the
achieved GFLOP/s and its fraction of this machine's dense matmul rate, and
the step's lower-bound time on this machine with the fraction of it the
measured step reaches (`machine_rates`: the rates are measured in the same
run). Without a selection of cases it also times how the step grows with
C, batch size and layer width (`<out>/scaling.json`, `<out>/scaling.png`).
Targets are freshly initialised, not trained: the cost does not depend on
the weights' values.

The `lm_*` cases are the default transformer (2 layers, d_model 128,
windows of 128 bytes) with all 12 matrices decomposed (C 32, rank 16, KL):
per position (`per_position=True`, factored), and one mask per window in
factored form against the dense form with `[C, i, o]` component weights;
their examples are windows, and `tokens/s` counts positions. The `spd_*`
cases are SPD with the options of `configs/spd_*.py`: the SPD paper's for
the toy models, the library's starting point for the transformer.

`--sweeps` times scoreboard entries (`apd_jax.cli.scoreboard`, their
configs as they are) the way the scoreboard trains them: one program, the
step vmapped over `--seeds` runs, each seed with its own target;
`--family` the members of a method's family (`apd_jax.cli.family`) the same
way. A case made from a config also prints how long its steps would take
at the measured rate (`train_hours`), and the table ends with the total:
what a campaign costs on this machine before it is started.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
from absl import app
from absl import flags

from apd_jax import methods
from apd_jax import targets
from apd_jax.cli import bench_cases
from apd_jax.cli import machine_rates
from apd_jax.engine import api
from apd_jax.methods import ci_functions
from apd_jax.models import transformer
from apd_jax.training import cpu
from apd_jax.training import train
from apd_jax.training.options import Training

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined on use, so importing is free)."""
  flags.DEFINE_bool("quick", False, "Few steps, short rate measurements and "
                    "only the quick cases (bench_cases.QUICK) of the "
                    "selection.")
  flags.DEFINE_string("out", "", "Directory for the JSON files and figure.")
  flags.DEFINE_string("json", "benchmark.json", "The results' file name.")
  flags.DEFINE_integer("steps", 0, "Timed steps per case (0: automatic).")
  flags.DEFINE_list("only", [], "Run only these cases (names, comma-"
                    "separated).")
  flags.DEFINE_string("method", "", "Run only this method's cases.")
  flags.DEFINE_list("sweeps", [], "Time these scoreboard entries (names, or "
                    "a method's name for all of its entries) as sweeps over "
                    "--seeds seeds, instead of the cases.")
  flags.DEFINE_string("family", "", "Time this method's family members "
                      "(apd_jax.cli.family) as sweeps over --seeds seeds, "
                      "instead of the cases.")
  flags.DEFINE_integer("seeds", 10, "Runs of each --sweeps entry or family "
                       "member.")
  flags.DEFINE_string("configs", bench_cases.CONFIGS, "The configs' directory.")
  flags.DEFINE_integer("max_batch", 0, "If > 0, caps every case's batch "
                       "size (a smoke run; not the paper's cost).")
  flags.DEFINE_bool("keep_going", False, "Record a case that fails and go "
                    "on with the next.")
  flags.DEFINE_string("reference", "", "A command that times a reference "
                      "implementation's SPD step on the case {case} and "
                      "prints a JSON line with ms_per_step: the selected "
                      "cases that have one are timed beside it "
                      "(apd_jax.cli.reference).")
  flags.DEFINE_integer("rounds", 3, "--reference: alternating rounds per "
                       "case.")


def _target(case: bench_cases.Case, seed: int = 0):
  """`(apply_fn, params, sample_fn, has_aux)` of a case's target, freshly
  initialised with `seed`."""
  module = targets.get(case.target)
  dims = dict(case.dims)
  params = module.init(jax.random.PRNGKey(seed), **dims)
  if case.target == "lm":   # random bytes: the cost is the same
    config = transformer.TransformerConfig(**dims)
    sample = lambda k, n: jax.random.randint(  # noqa: E731
        k, (n, config.context), 0, config.vocab)
  else:
    given = {**bench_cases.DATA.get(case.target, {}), **dims, **dict(case.data)}
    sample = module.sampler(**{k: given[k] for k in module.SAMPLER
                               if k in given})
  return targets.apply_fn(module), params, sample, module.HAS_AUX


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def build(case: bench_cases.Case):
  """`(step_fn, state, args, plan, sample_fn)` for a case, through the
  public building blocks (the plan as `decompose` derives it):
  `step_fn(state, args) -> (state, metrics)`. With `case.runs > 1`, a
  sweep over seeds 0..runs-1 as `decompose_sweep` runs it with
  `params_for_run` (each seed its own target; the step vmapped)."""
  apply_fn, params, sample, has_aux = _target(case)
  include = case.include or bench_cases.INCLUDE[case.target]
  target = api.make_target(apply_fn, params, include, has_aux=has_aux,
                           log=False, sample_fn=sample)
  method = methods.get(case.method)(**case.options)
  training = Training(batch_size=case.batch_size, progress=False)
  if case.runs == 1:
    state = api.init_state(method, target, training, seed=1,
                           sample_fn=sample)
    plan = method.plan(target, sample, case.batch_size, state.components)
    step = api.make_train_step(method, plan, target, sample, training)
    return step, state, jax.random.PRNGKey(2), plan, sample
  seeds = range(case.runs)
  own = [dataclasses.replace(target, params=_target(case, s)[1])
         for s in seeds]
  static = method.bound([dict(seed=s) for s in seeds])
  states = [api.init_state(method, t, training, seed=s, sample_fn=sample)
            for s, t in zip(seeds, own, strict=True)]
  plan = static.plan(target, sample, case.batch_size, states[0].components)

  def one(state, key, hypers, target_params):
    run_target = dataclasses.replace(target, params=target_params)
    return api.make_train_step(static, plan, run_target, sample, training)(
        state, key, hypers)

  hypers = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), static.hypers(
      **{n: getattr(method, n) for n in method.SWEEPABLE}))
  args = (_stack([api.run_keys(s)[1] for s in seeds]),
          _stack([hypers] * case.runs), _stack([t.params for t in own]))
  return (lambda s, a: jax.vmap(one)(s, *a)), _stack(states), args, plan, (
      sample)


def _describe(plan) -> str:
  """How the step computes (APD: its attribution mode; SPD: the number of
  factored products)."""
  if hasattr(plan, "attribution_mode"):
    return f"{plan.attribution_mode} {plan.attribution_contract}"
  return f"{len(getattr(plan, 'labels', ()))} products"


def _jit(fn):
  return jax.jit(fn, compiler_options=dict(cpu.compiler_options()))


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}


def counted(step, state, args, lowered, compiled):
  """`(cost, loops)`: XLA's cost analysis of the step lowered with the
  causal-importance MLPs unblocked (`ci_functions.unblocked`), and the
  number of while loops left in that program.

  XLA counts a loop's body once, and the SPD step's blocked backward pass
  is a loop over blocks of rows: counted as it is timed, most of its work
  would be missing. Where the plain lowering is the same program (APD),
  the timed step's own analysis is used. `loops` > 0: some work is still
  counted once only."""
  jax.clear_caches()   # trace anew, whatever was cached
  with ci_functions.unblocked():
    plain = _jit(step).lower(state, args)
  jax.clear_caches()   # so that nothing traced unblocked is reused
  if plain.as_text() != lowered.as_text():
    compiled = plain.compile()
  return _cost(compiled), compiled.as_text().count(" while(")


def measure(case: bench_cases.Case, steps: int) -> dict:
  """Compile time, steps/s, memory and XLA's counts of one case's step (of
  all its runs together for a sweep)."""
  step, state, args, plan, sample = build(case)
  t = time.perf_counter()
  lowered = _jit(step).lower(state, args)
  single = lowered.compile()
  compile_s = time.perf_counter() - t
  mem = single.memory_analysis()
  run = train.make_runner(step).lower(state, args, steps).compile()
  state, m = run(state, args)     # the first call's allocations, untimed
  jax.block_until_ready(m)
  t = time.perf_counter()
  state, m = run(state, args)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / steps
  cost, loops = counted(step, state, args, lowered, single)
  flops = float(cost.get("flops", float("nan")))
  sizes = [getattr(mem, a, 0) or 0 for a in (
      "temp_size_in_bytes", "argument_size_in_bytes",
      "output_size_in_bytes")] if mem is not None else [float("nan")] * 3
  x = jax.eval_shape(lambda k: sample(k, 1), jax.random.PRNGKey(0))
  examples = case.batch_size * case.runs
  tokens = examples * (x.shape[1] if case.target == "lm" else 1)
  opts = case.options
  return dict(case=case.name, method=case.method, runs=case.runs,
              batch_size=case.batch_size,
              n_components=opts["n_components"], rank=opts.get("rank"),
              projections=opts.get("attribution_projections", 0),
              attribution=_describe(plan), compile_s=compile_s, step_s=dt,
              steps_per_s=1 / dt, run_steps_per_s=case.runs / dt,
              examples_per_s=examples / dt, tokens_per_s=tokens / dt,
              gflop_per_step=flops / 1e9, gflops=flops / dt / 1e9,
              gtranscendentals_per_step=float(
                  cost.get("transcendentals", 0.0)) / 1e9,
              gbytes_per_step=float(cost.get("bytes accessed", 0.0)) / 1e9,
              counted_loops=loops, memory_mib=sum(sizes) / 2 ** 20,
              temp_mib=sizes[0] / 2 ** 20, train_steps=case.train_steps,
              train_hours=case.train_steps * dt / 3600)


def scaling(steps: int) -> list[dict]:
  """Step time of the 1-layer residual MLP (rank 1) as C, batch size and
  `d_resid` vary one at a time around the paper's setting."""
  (base,) = [c for c in bench_cases.CASES if c.name == "resid_mlp_1_m1"]
  rows = []
  grid = [("n_components", v) for v in (32, 64, 130, 260)]
  grid += [("batch_size", v) for v in (256, 512, 1024, 2048)]
  grid += [("d_resid", v) for v in (250, 500, 1000, 2000)]
  for what, value in grid:
    if what == "d_resid":
      case = dataclasses.replace(base, dims=(("n_layers", 1),
                                             ("d_resid", value)))
    elif what == "batch_size":
      case = dataclasses.replace(base, batch_size=value)
    else:
      case = dataclasses.replace(base, options=dict(base.options,
                                                    n_components=value))
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


HEADER = (f"{'case':22s} {'compile s':>9s} {'steps/s':>8s} {'ex/s':>9s} "
          f"{'tokens/s':>9s} {'GFLOP/step':>10s} {'% matmul':>8s} "
          f"{'Gtr/step':>8s} {'GB/step':>8s} {'limit ms':>8s} "
          f"{'% limit':>7s} {'MiB':>7s}  plan")


def line(r: dict) -> str:
  """A case's row of the printed table."""
  return (f"{r['case']:22s} {r['compile_s']:9.1f} {r['steps_per_s']:8.3g} "
          f"{r['examples_per_s']:9.3g} {r['tokens_per_s']:9.3g} "
          f"{r['gflop_per_step']:10.3g} {100 * r['matmul_fraction']:7.1f}% "
          f"{r['gtranscendentals_per_step']:8.3g} "
          f"{r['gbytes_per_step']:8.3g} {r['limit_s'] * 1e3:8.3g} "
          f"{100 * r['limit_fraction']:6.1f}% {r['memory_mib']:7.0f}  "
          f"{r['attribution']}" + (
              f"  {r['train_steps']} steps: {r['train_hours']:.2f} h"
              if r.get("train_steps") else ""))


def select(cases: list[bench_cases.Case], *, quick: bool = False,
           only: list[str] | tuple = (), method: str = ""
           ) -> list[bench_cases.Case]:
  """The cases named in `only` (in `cases`' order), else `method`'s, else
  all; `quick`: of those, the ones in `bench_cases.QUICK` (or the first)."""
  names = [c.name for c in cases]
  unknown = sorted(set(only) - set(names))
  if unknown:
    raise ValueError(f"unknown benchmark cases {unknown}; known: {names}")
  if only:
    cases = [c for c in cases if c.name in only]
  if method:
    cases = [c for c in cases if c.method == method]
  if quick and cases:
    cases = [c for c in cases if c.name in bench_cases.QUICK] or cases[:1]
  return cases


def run(*, quick: bool = False, out: str = "", steps: int = 0,
        only: list[str] | tuple = (), method: str = "",
        cases: list[bench_cases.Case] | None = None, max_batch: int = 0,
        filename: str = "benchmark.json", keep_going: bool = False) -> dict:
  """Measures the cases `select` picks from `cases` (default
  `bench_cases.CASES`) and, given none of those choices, the scaling; each
  at a batch size of at most `max_batch` if > 0. Prints the table and
  writes `out/filename` after each case if `out`; returns the results.
  `keep_going`: a case that raises is recorded with its `error`, and the
  next one runs."""
  cpu.apply_tweaks()   # as a run starting on this machine does
  sweep = not (quick or only or method or cases or max_batch)
  cases = select(list(bench_cases.CASES if cases is None else cases),
                 quick=quick, only=only, method=method)
  if max_batch:
    cases = [dataclasses.replace(c, batch_size=min(c.batch_size, max_batch))
             for c in cases]
  steps = steps or (3 if quick else 10)
  rates = machine_rates.machine(quick)
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}: dense "
        f"matmul {rates['matmul_gflops']:.1f} GFLOP/s, transcendentals "
        f"{rates['transcendentals_g_per_s']:.3g} G/s (in cache), streaming "
        f"{rates['stream_gb_per_s']:.3g} GB/s", flush=True)
  result = dict(jax=jax.__version__, device=jax.devices()[0].device_kind,
                backend=jax.default_backend(), steps=steps, machine=rates,
                matmul_gflops=rates["matmul_gflops"],
                planned=[c.name for c in cases], cases=[])

  def save():
    if out:
      os.makedirs(out, exist_ok=True)
      with open(os.path.join(out, filename), "w") as f:
        json.dump(result, f, indent=2)

  save()
  print(HEADER, flush=True)
  for case in cases:
    try:
      r = measure(case, steps)
    except Exception as e:  # noqa: BLE001 - recorded, and the run goes on
      if not keep_going:
        raise
      r = dict(case=case.name, method=case.method, runs=case.runs,
               error=f"{type(e).__name__}: {e}"[:2000])
      print(f"{case.name:22s} failed: {r['error'][:300]}", flush=True)
    else:
      r.update(machine_rates.limit(r, rates))
      print(line(r), flush=True)
    result["cases"].append(r)
    save()
  hours = [r["train_hours"] for r in result["cases"] if r.get("train_steps")]
  if hours:
    result["train_hours"] = sum(hours)
    save()
    print(f"all {len(hours)} cases' steps at these rates, one after "
          f"another: {sum(hours):.1f} h", flush=True)
  if sweep:
    print("scaling (resid_mlp_1_m1):")
    result["scaling"] = scaling(max(steps // 2, 2))
    if out:
      with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump(result["scaling"], f, indent=2)
      plot_scaling(result["scaling"], os.path.join(out, "scaling.png"))
  return result


def main(argv):
  del argv
  cases = None
  if FLAGS.sweeps and FLAGS.family:
    raise app.UsageError("give --sweeps or --family, not both")
  if FLAGS.reference and (FLAGS.sweeps or FLAGS.family):
    raise app.UsageError("--reference times the SPD cases (--only), not "
                         "--sweeps or --family")
  if FLAGS.sweeps:
    cases = bench_cases.sweep_cases(FLAGS.sweeps, FLAGS.seeds, FLAGS.configs)
  if FLAGS.family:
    cases = bench_cases.family_cases(FLAGS.family, FLAGS.seeds, FLAGS.configs)
  if FLAGS.reference:
    from apd_jax.cli import reference  # noqa: PLC0415
    cpu.apply_tweaks()
    chosen = select(bench_cases.CASES, only=FLAGS.only,
                    method=FLAGS.method or "spd")
    reference.run(chosen, FLAGS.reference, measure, rounds=FLAGS.rounds,
                  steps=FLAGS.steps or 10, out=FLAGS.out)
    return
  run(quick=FLAGS.quick, out=FLAGS.out, steps=FLAGS.steps, only=FLAGS.only,
      method=FLAGS.method, cases=cases, max_batch=FLAGS.max_batch,
      filename=FLAGS.json, keep_going=FLAGS.keep_going)


if __name__ == "__main__":
  define_flags()
  app.run(main)
