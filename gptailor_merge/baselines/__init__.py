"""Single-model pruning baselines (reverse, ShortGPT, angular, greedy perplexity, LaCo).

Calibrated on the base model with search-split text; each returns a base-only genome (a removal
set) that becomes a recipe (`baseline_recipe`) or a search seed (`baseline_removals`). LaCo also
returns collapsed layers, which only a saved model folder can hold (`save_collapsed`).
"""

from gptailor_merge.baselines import laco as _laco  # noqa: F401  (registers "laco")
from gptailor_merge.baselines import methods as _methods  # noqa: F401  (registers the others)
from gptailor_merge.baselines.core import (
    BASELINES,
    DEFAULT_SEED_METHODS,
    Baseline,
    BaselineResult,
    Calibration,
    baseline_recipe,
    baseline_removals,
    calibration_texts,
    canonical_name,
    get_baseline,
    run_baseline,
)
from gptailor_merge.baselines.laco import collapsed_model, save_collapsed
from gptailor_merge.baselines.methods import angular_distances, block_influence, calibration_nll

__all__ = [
    "BASELINES",
    "DEFAULT_SEED_METHODS",
    "Baseline",
    "BaselineResult",
    "Calibration",
    "angular_distances",
    "baseline_recipe",
    "baseline_removals",
    "block_influence",
    "calibration_nll",
    "calibration_texts",
    "canonical_name",
    "collapsed_model",
    "get_baseline",
    "run_baseline",
    "save_collapsed",
]
