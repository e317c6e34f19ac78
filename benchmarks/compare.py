"""Benchmark: paired intervals between two rows of a quality result (gptailor_merge.bench.compare); `--help` for its options, benchmarks/README.md for what it measures."""

from gptailor_merge.bench.compare import main

if __name__ == "__main__":
    main()
