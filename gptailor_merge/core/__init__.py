"""The vocabulary every other stage speaks: errors, name registries, atomic file writes,
output-folder safety, the run settings (`RunConfig`), the genome and the merge-method registry.

Imports nothing else from the package (docs/ARCHITECTURE.md).
"""
