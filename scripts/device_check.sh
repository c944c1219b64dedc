#!/usr/bin/env bash
# Times every benchmark case (APD and SPD) and the SPD scoreboard entries,
# as sweeps over seeds, on this machine's accelerator, in at most 8 minutes.
#
#   scripts/device_check.sh [OUT]             # OUT: default $OUT, else
#                                             # runs/device_check
#   scripts/device_check.sh --dry-run [OUT]   # on a CPU: tiny steps and
#   DRY_RUN=1 scripts/device_check.sh [OUT]   # batches, quick cases (< 1 min)
#
# Needs no network: apd_jax is imported from this checkout (`pip install -e
# .` only if that fails). Each part runs under its own time limit and writes
# its JSON after every case, so a part cut short keeps what it measured:
#   OUT/spd_cases.json    the `spd_*` benchmark cases
#   OUT/apd_cases.json    the APD cases
#   OUT/spd_sweeps.json   every SPD scoreboard entry, SEEDS runs vmapped
#   OUT/summary.json      all of them, and each part's exit status
# with logs OUT/<part>.log, and prints the summary. Timings, not results:
# the targets are untrained. Environment: PYTHON (default python), SEEDS
# (default 10), BUDGET_S (default 470: seconds for everything).
set -u

dry=${DRY_RUN:-0}
out_arg=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) out_arg=$arg ;;
  esac
done
cd "$(dirname "$0")/.."
out=${out_arg:-${OUT:-runs/device_check}}
mkdir -p "$out"
py=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS

if [[ $dry == 1 ]]; then
  # Tiny and fast to compile: checks the sequence, measures nothing. The
  # limits leave room for a busy machine; an idle one takes < 1 min.
  budget=${BUDGET_S:-300}
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0"
  flags=(--quick --steps=2 --max_batch=16)
  sweep_flags=(--quick --steps=2 --max_batch=16 --seeds=2)
  limits=(100 100 100)
else
  budget=${BUDGET_S:-470}
  flags=(--steps=10)
  sweep_flags=(--steps=5 "--seeds=${SEEDS:-10}")
  limits=(140 130 600)   # the last part: whatever time is left
fi

# One interpreter start: apd_jax and jax import, and jax's backend.
probe() {
  "$py" -c 'import apd_jax, jax; print(jax.default_backend())' \
    2>"$out/backend.log"
}
if ! backend=$(probe); then
  echo "apd_jax does not import here; trying pip install -e ."
  if ! timeout 180 "$py" -m pip install -q -e .; then
    echo "pip install -e . failed: with no network, install apd_jax's" \
      "dependencies (pyproject.toml, setup.cfg) from local wheels first" \
      "(PIP_FIND_LINKS=DIR PIP_NO_INDEX=1)." >&2
    exit 2
  fi
  if ! backend=$(probe); then
    echo "apd_jax or jax does not import (see $out/backend.log)" >&2
    exit 2
  fi
fi
{
  echo "backend: $backend"
  command -v nvidia-smi >/dev/null && nvidia-smi
} >"$out/environment.txt" 2>&1
echo "jax backend: $backend"
if [[ $backend == cpu && $dry != 1 ]]; then
  echo "jax sees no accelerator: install jax with CUDA (jax[cuda12]), or" \
    "pass --dry-run for the CPU check." >&2
  exit 3
fi

: >"$out/parts.tsv"
# part NAME LIMIT_S ARGS...: one benchmark run, cut at LIMIT_S or when the
# budget runs out (10 s kept for the summary).
part() {
  local name=$1 limit=$2 left rc t0=$SECONDS
  shift 2
  left=$((budget - (SECONDS - start) - 10))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    printf '%s\t%s\t%s\n' "$name" skipped 0 >>"$out/parts.tsv"
    echo "$name: skipped (budget spent)"
    return
  fi
  echo "$name: up to ${limit} s"
  timeout -k 5 "$limit" "$py" -m apd_jax.cli.benchmark --keep_going \
    --out="$out" --json="$name.json" "$@" >"$out/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - t0)) >>"$out/parts.tsv"
  ((rc == 124)) && echo "$name: stopped at its limit (${limit} s)"
}

part spd_cases "${limits[0]}" --method=spd "${flags[@]}"
part apd_cases "${limits[1]}" --method=apd "${flags[@]}"
part spd_sweeps "${limits[2]}" --sweeps=spd "${sweep_flags[@]}"
"$py" -m apd_jax.cli.device_check --out="$out" --backend="$backend" \
  --seconds=$((SECONDS - start))
