"""Benchmarks as a stage of the package: measurements that `benchmarks/*.py` mains print and write."""
