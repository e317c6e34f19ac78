"""Benchmark: what GPTailor keeps (gptailor_merge.bench.quality); `--help` for its options, benchmarks/README.md for what it measures."""

from gptailor_merge.bench.quality import main

if __name__ == "__main__":
    main()
