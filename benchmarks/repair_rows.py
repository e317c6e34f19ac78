"""Benchmark: the +repair rows of a quality result, re-derived (gptailor_merge.bench.repair_rows); `--help` for its options, benchmarks/README.md for what it measures."""

from gptailor_merge.bench.repair_rows import main

if __name__ == "__main__":
    main()
