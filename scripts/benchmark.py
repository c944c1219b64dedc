r"""Benchmark of the APD and SPD train steps; see `apd_jax/cli/benchmark.py`.

  python scripts/benchmark.py --quick                       # < 1 min
  python scripts/benchmark.py --out=/tmp/bench              # every case
  python scripts/benchmark.py --method=spd --out=/tmp/bench # the SPD cases
  python scripts/benchmark.py --sweeps=spd --seeds=10       # the scoreboard
"""

from absl import app

from apd_jax.cli import benchmark

if __name__ == "__main__":
  benchmark.define_flags()
  app.run(benchmark.main)
