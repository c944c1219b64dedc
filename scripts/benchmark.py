r"""Benchmark of the APD step; see `apd_jax/cli/benchmark.py`.

  python scripts/benchmark.py --quick        # < 1 min
  python scripts/benchmark.py --out=/tmp/bench
"""

from absl import app

from apd_jax.cli import benchmark

if __name__ == "__main__":
  benchmark.define_flags()
  app.run(benchmark.main)
