"""gptailor-merge: tailor a pruned model from a family of fine-tunes (GPTailor, arXiv 2506.20480).

The search proposes genomes, writes them as mergekit recipes, materializes them (mergekit or the
proven-equal in-memory stitcher), scores them, and hands back the best recipe.
"""

__version__ = "0.1.0"
