"""Benchmark: what a search trace costs (gptailor_merge.bench.speed); `--help` for its options, benchmarks/README.md for what it measures."""

from gptailor_merge.bench.speed import main

if __name__ == "__main__":
    main()
