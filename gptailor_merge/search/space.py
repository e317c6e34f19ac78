"""Genome <-> nevergrad parametrization, with the layer target met by construction; search seeds.

Removal is a random-key encoding: one score per layer, the `n_remove` lowest are removed, so every
proposal keeps exactly the target count. Sources are a per-layer bitmask Choice over candidate
subsets; the merge parameters the methods' registry entries search (lambda, density) are bounded
per-layer arrays. Seeds: the paper's removal orders.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import nevergrad as ng
import numpy as np

from gptailor_merge.core.errors import ConfigError
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.core.merge_methods import MERGE_METHODS, searched_params

_KEEP_KEY, _REMOVE_KEY = 0.9, 0.1


@dataclass(frozen=True)
class SearchSpace:
    """The GPTailor space of one family and target (docs/ARCHITECTURE.md, "Genome")."""

    n_layers: int
    n_candidates: int
    n_keep: int
    methods: tuple[str, ...] = ("task_arithmetic",)
    lambda_range: tuple[float, float] = (0.3, 1.0)
    density_range: tuple[float, float] = (0.3, 1.0)
    max_sources: int | None = None
    allow_candidates: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.n_keep <= self.n_layers:
            raise ConfigError(f"cannot keep {self.n_keep} of {self.n_layers} layers; choose 1..{self.n_layers}")
        unknown = [m for m in self.methods if m not in MERGE_METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"unknown merge method(s) {unknown}; choose from {', '.join(MERGE_METHODS.names())}")
        lo, hi = self.lambda_range
        if not 0 < lo <= hi <= 2:
            raise ConfigError(f"lambda_range {self.lambda_range} must satisfy 0 < low <= high <= 2")

    @property
    def n_remove(self) -> int:
        return self.n_layers - self.n_keep

    @property
    def subsets(self) -> tuple[tuple[int, ...], ...]:
        """Allowed per-layer source subsets (as sorted candidate tuples), base-only first."""
        if not self.allow_candidates or self.n_candidates == 0:
            return ((),)
        limit = self.max_sources or self.n_candidates
        out = []
        for mask in range(2**self.n_candidates):
            subset = tuple(j for j in range(self.n_candidates) if mask >> j & 1)
            if len(subset) <= limit:
                out.append(subset)
        return tuple(sorted(out, key=lambda s: (len(s), s)))

    @property
    def searched(self) -> tuple[str, ...]:
        """Per-layer merge parameters the methods' registry entries vary (e.g. lam, density)."""
        return searched_params(self.methods)

    # ---- nevergrad ------------------------------------------------------------------------
    def parametrization(self, seed: int) -> ng.p.Dict:
        L = self.n_layers
        parts: dict = {"removal": ng.p.Array(shape=(L,), lower=0.0, upper=1.0)}
        if len(self.subsets) > 1:
            parts["sources"] = ng.p.Choice(range(len(self.subsets)), repetitions=L, deterministic=True)
            lo, hi = self.lambda_range
            parts["lam"] = ng.p.Array(shape=(L,), lower=lo, upper=hi) if lo < hi and "lam" in self.searched else None
            if "density" in self.searched:
                lo, hi = self.density_range
                parts["density"] = ng.p.Array(shape=(L,), lower=lo, upper=hi)
            if len(self.methods) > 1:
                parts["method"] = ng.p.Choice(list(self.methods), deterministic=True)
        param = ng.p.Dict(**{k: v for k, v in parts.items() if v is not None})
        param.random_state = np.random.RandomState(seed)
        return param

    def decode(self, value: dict) -> Genome:
        """A parametrization value -> Genome with exactly `n_keep` layers."""
        keys = np.asarray(value["removal"], dtype=float)
        order = sorted(range(self.n_layers), key=lambda i: (keys[i], i))
        removed = set(order[: self.n_remove])
        subsets = self.subsets
        sources = value.get("sources")
        lams = value.get("lam")
        densities = value.get("density")
        method = value.get("method", self.methods[0])
        layers = []
        for i in range(self.n_layers):
            if i in removed:
                continue
            subset = subsets[int(sources[i])] if sources is not None else ()
            lam = float(lams[i]) if lams is not None else self.lambda_range[0]
            density = float(densities[i]) if densities is not None else 1.0
            layers.append(LayerSpec(i, subset, lam=lam, density=density))
        return Genome(self.n_layers, self.n_candidates, tuple(layers), method=method)

    def encode(self, genome: Genome) -> dict:
        """Genome -> a parametrization value that decodes back to it (for seeds and replay)."""
        if genome.n_kept != self.n_keep:
            raise ConfigError(f"seed keeps {genome.n_kept} layers, the target is {self.n_keep}")
        kept = {s.layer_idx: s for s in genome.layers}
        value: dict = {
            "removal": np.array([_KEEP_KEY if i in kept else _REMOVE_KEY for i in range(self.n_layers)])
        }
        subsets = self.subsets
        if len(subsets) > 1:
            index = {s: k for k, s in enumerate(subsets)}
            lo, hi = self.lambda_range
            value["sources"] = tuple(index.get(kept[i].sources, 0) if i in kept else 0 for i in range(self.n_layers))
            if lo < hi and "lam" in self.searched:
                value["lam"] = np.array([min(max(kept[i].lam, lo), hi) if i in kept else lo for i in range(self.n_layers)])
            if "density" in self.searched:
                dlo, dhi = self.density_range
                value["density"] = np.array(
                    [min(max(kept[i].density, dlo), dhi) if i in kept else dhi for i in range(self.n_layers)]
                )
            if len(self.methods) > 1:
                value["method"] = genome.method if genome.method in self.methods else self.methods[0]
        return value


# ---- seeds ----------------------------------------------------------------------------------
def removal_order(name: str, n_layers: int) -> list[int]:
    """The paper's heuristic removal orders (which layers go first), never the first or last layer."""
    inner = list(range(1, n_layers - 1))
    if name == "higher_first":
        return inner[::-1]
    if name == "alternating":  # high, low, high, low ... within the upper half first
        mid = n_layers // 2
        upper, lower = list(range(n_layers - 2, mid - 1, -1)), list(range(mid - 1, 0, -1))
        out = []
        for a, b in zip(upper, lower):
            out += [a, b]
        out += upper[len(lower):] + lower[len(upper):]
        return out
    if name == "middle_outward":
        mid = (n_layers - 1) / 2
        return sorted(inner, key=lambda i: (abs(i - mid), -i))
    raise ConfigError(f"unknown removal order {name!r}")


REMOVAL_ORDERS = ("alternating", "higher_first", "middle_outward")


def paper_seeds(space: SearchSpace, extra_removals: Iterable[Sequence[int]] = ()) -> list[Genome]:
    """Seeds: each removal order (and given removal sets) x candidate patterns x merge scales."""
    removals = [removal_order(o, space.n_layers)[: space.n_remove] for o in REMOVAL_ORDERS]
    removals += [list(r) for r in extra_removals if len(r) == space.n_remove]
    patterns: list[tuple[int, ...] | None] = [()]
    if len(space.subsets) > 1:
        patterns += [(j,) for j in range(space.n_candidates)]
        widest = max(space.subsets, key=len)
        if len(widest) > 1:
            patterns.append(widest)
    lo, hi = space.lambda_range
    scales = sorted({lo, round((lo + hi) / 2, 4), hi})
    seeds: list[Genome] = []
    seen = set()
    for removed in removals:
        for pattern in patterns:
            for lam in scales if pattern and len(pattern) > 1 else [lo]:
                genome = Genome.from_choices(
                    space.n_layers,
                    space.n_candidates,
                    removed,
                    [pattern] * space.n_layers,
                    lams=[lam] * space.n_layers,
                    method=space.methods[0],
                )
                if genome.genome_id not in seen:
                    seen.add(genome.genome_id)
                    seeds.append(genome)
    return seeds
