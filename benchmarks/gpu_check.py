"""Benchmark: the search, replay and mergekit on a 7B-shaped family on one GPU (gptailor_merge.bench.gpu_check); `--help` for its options, benchmarks/README.md for what it measures."""

from gptailor_merge.bench.gpu_check import main

if __name__ == "__main__":
    main()
