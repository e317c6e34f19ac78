"""Shared parts of the single-model pruning baselines: calibration inputs, results, the registry.

A baseline takes a `Calibration` (family + stitcher + tokenizer + search-split texts) and a number
of layers to remove, and returns a `BaselineResult` whose genome is base-only. Baselines never
touch candidates or recipes; `baseline_recipe` turns a result into a passthrough mergekit recipe.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gptailor_merge.core.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_LENGTH,
    DEFAULT_PREFIX_CACHE_BYTES,
)
from gptailor_merge.core.errors import ConfigError, TaskError
from gptailor_merge.core.genome import Genome
from gptailor_merge.core.registry import Registry
from gptailor_merge.materialize.prefix import PrefixReuse
from gptailor_merge.materialize.recipe import FamilyRefs, Recipe, genome_to_recipe

if TYPE_CHECKING:
    import torch

    from gptailor_merge.family.family import Family
    from gptailor_merge.materialize.stitch import Stitcher
    from gptailor_merge.scoring import Task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """What a baseline measures on: the family's stitcher (base model loaded once), its tokenizer
    and the calibration texts (search split only). Sequences are BOS + tokens, `max_length` at most."""

    stitcher: Stitcher
    tokenizer: Any
    texts: tuple[str, ...]
    batch_size: int = DEFAULT_BATCH_SIZE
    max_length: int = DEFAULT_MAX_LENGTH
    progress: bool = False
    # hidden states of shared leading layers across the removal sets a baseline tries
    # (gptailor_merge/materialize/prefix.py; results are bitwise the same). 0 bytes turns it off.
    prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES
    prefix: PrefixReuse | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        if not self.texts:
            raise TaskError("no calibration text: give at least one perplexity (text) task example")
        if self.prefix_cache_bytes > 0:
            object.__setattr__(self, "prefix", PrefixReuse(self.prefix_cache_bytes))

    def build(self, genome: Genome):
        """The stitched model of `genome`, reusing cached prefix hidden states where it can."""
        model = self.stitcher.build(genome)
        return model if self.prefix is None else self.prefix.wrap(model, genome)

    @property
    def family(self) -> Family:
        return self.stitcher.family

    def full_genome(self) -> Genome:
        return Genome.base_only(self.family.n_layers, self.family.n_candidates)

    def base_genome(self, removed: Sequence[int]) -> Genome:
        return Genome.base_only(self.family.n_layers, self.family.n_candidates, removed)


@dataclass(frozen=True)
class BaselineResult:
    """A baseline's answer: the base-only genome (its removal set) plus what it measured.

    `details` is plain YAML-able data (per-layer scores, steps) that rides in recipe metadata.
    `collapsed` is LaCo's only: original layer index -> that slot's collapsed layer tensors
    (names relative to the layer), which no stock mergekit recipe can express.
    """

    method: str
    genome: Genome
    details: dict = field(default_factory=dict)
    collapsed: dict[int, dict[str, torch.Tensor]] | None = None

    @property
    def removed(self) -> list[int]:
        return list(self.genome.removed)


class Baseline(Protocol):
    def __call__(self, calib: Calibration, n_remove: int, **options: Any) -> BaselineResult: ...


BASELINES: Registry[Baseline] = Registry("baseline")
DEFAULT_SEED_METHODS = ("reverse", "shortgpt", "angular", "greedy-ppl")  # greedy-ppl: the costliest (prefix-reusing)


def canonical_name(method: str) -> str:
    """CLI spellings to registry keys: `greedy-ppl` -> `greedy_ppl`."""
    return method.strip().lower().replace("-", "_")


def get_baseline(method: str) -> Baseline:
    """The registered baseline, or a ConfigError with a did-you-mean."""
    try:
        return BASELINES.get(canonical_name(method))
    except KeyError as exc:
        raise ConfigError(f"{exc.args[0]} Pass one of them as --method.") from None


def check_n_remove(calib: Calibration, n_remove: int) -> int:
    n_layers = calib.family.n_layers
    if not 0 <= n_remove < n_layers:
        raise ConfigError(
            f"cannot remove {n_remove} of {n_layers} layers; remove 0..{n_layers - 1} "
            "(at least one layer must stay)"
        )
    return n_remove


def run_baseline(method: str, calib: Calibration, n_remove: int, **options: Any) -> BaselineResult:
    """Run one baseline by name; the result removes exactly `n_remove` layers."""
    fn = get_baseline(method)
    result = fn(calib, check_n_remove(calib, n_remove), **options)
    if len(result.genome.removed) != n_remove:  # a bug, not a user error
        raise AssertionError(f"{method} removed {result.genome.removed}, wanted {n_remove} layers")
    logger.info("%s removes layers %s", result.method, result.removed)
    return result


def baseline_removals(calib: Calibration, n_remove: int,
                      methods: Sequence[str] = DEFAULT_SEED_METHODS,
                      options: dict[str, dict] | None = None) -> dict[str, list[int]]:
    """Removal sets by baseline, for `space.paper_seeds(space, extra_removals=...values())`.

    A baseline that cannot reach the target (LaCo with its sweep off) is skipped with a warning,
    so the search still starts.
    """
    out: dict[str, list[int]] = {}
    for method in methods:
        try:
            result = run_baseline(method, calib, n_remove, **(options or {}).get(method, {}))
        except ConfigError as exc:
            if canonical_name(method) not in BASELINES:
                raise
            logger.warning("baseline %s gives no seed: %s", method, exc)
            continue
        out[result.method] = result.removed
    return out


def calibration_texts(tasks: Sequence[Task], n_examples: int | None) -> list[str]:
    """The first `n_examples` of each task's **search** split; every task must be a text task."""
    texts: list[str] = []
    for task in tasks:
        if task.kind != "perplexity":
            raise TaskError(
                f"task {task.name!r} is {task.kind.replace('_', ' ')}; calibration needs text "
                "(perplexity) tasks, e.g. a JSONL file of {\"text\": ...} lines"
            )
        texts += [ex.text for ex in task.examples("search", n_examples)]
    return texts


def baseline_recipe(result: BaselineResult, family: Family, *, dtype: str = "float32",
                    metadata: dict | None = None) -> Recipe:
    """The passthrough recipe of the result's removal set, naming the baseline in its metadata."""
    meta: dict = {"baseline": result.method, "baseline_details": result.details}
    if result.collapsed:
        meta["note"] = (
            "LaCo's removal set only: this recipe keeps the base's own layers where LaCo keeps "
            "collapsed ones (projections theta_l + sum_k (theta_{l+k} - theta_l), norms of layer "
            "l), which mergekit cannot express; it is not LaCo's model"
        )
    return genome_to_recipe(result.genome, FamilyRefs.of(family), dtype=dtype,
                            metadata={**meta, **(metadata or {})})


def rounded(values: Sequence[float], digits: int = 6) -> list[float]:
    """Floats for YAML metadata (short, stable)."""
    return [round(float(v), digits) for v in values]

