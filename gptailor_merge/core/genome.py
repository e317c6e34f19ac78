"""The tailoring (genome) of a family: which layers stay, and where each kept layer comes from.

Pure data over ints and floats (docs/ARCHITECTURE.md, "Genome"); no torch, no nevergrad. Which merge methods
exist and which parameters each reads comes from the registry in `merge_methods`. Every other stage
(space, recipe, stitcher, journal) speaks in Genomes, so the invariants live here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from gptailor_merge.core.errors import GenomeError
from gptailor_merge.core.merge_methods import GENOME_PARAMS, MERGE_METHODS

LAMBDA_RANGE = GENOME_PARAMS["lam"].valid
DENSITY_RANGE = GENOME_PARAMS["density"].valid


@dataclass(frozen=True)
class LayerSpec:
    """One kept layer: source layer index, the candidates it comes from, and merge parameters.

    `sources == ()` is the base's layer, one source is a selection, two or more a merge.
    `weights` are mergekit's per-source `weight` (default 1.0 each); `lam` and `density` only
    matter for merges and are canonicalised to 1.0 otherwise so equal layers compare equal.
    """

    layer_idx: int
    sources: tuple[int, ...] = ()
    lam: float = 1.0
    density: float = 1.0
    weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        sources = tuple(sorted(int(s) for s in self.sources))
        object.__setattr__(self, "sources", sources)
        weights = tuple(float(w) for w in self.weights) or (1.0,) * len(sources)
        if len(weights) != len(sources):
            raise GenomeError(
                f"layer {self.layer_idx}: {len(weights)} weights for {len(sources)} sources; "
                "give one weight per source or none."
            )
        object.__setattr__(self, "weights", weights)
        if len(sources) < 2:  # parameters of selections and base layers carry no meaning
            object.__setattr__(self, "lam", 1.0)
            object.__setattr__(self, "density", 1.0)
            object.__setattr__(self, "weights", (1.0,) * len(sources))
        object.__setattr__(self, "lam", float(self.lam))
        object.__setattr__(self, "density", float(self.density))

    @property
    def is_merge(self) -> bool:
        return len(self.sources) >= 2

    def key(self) -> tuple:
        """Hashable identity of the tensors this layer produces (used by caches)."""
        return (self.layer_idx, self.sources, self.lam, self.density, self.weights)


LayerKey = tuple
"""What one output position of a stitched model computes: `(LayerSpec.key(), method or None)`."""


def layer_key(spec: LayerSpec, method: str | None) -> LayerKey:
    """The identity of the layer module for `spec` when sourced layers go through `method` (None:
    passthrough). The stitcher caches modules under it and prefix reuse caches hidden states under
    it, so the two cannot drift. With merges anywhere every sourced layer is merged (a selection is
    then `B + 1 * (C - B)`, not always bitwise `C`); a base layer is the base's own module whatever
    the method, so its key drops the method and is shared more."""
    return (spec.key(), method if spec.sources else None)


def layer_keys(genome: Genome) -> tuple[LayerKey, ...]:
    """`layer_key` of every output position of `genome`."""
    return tuple(layer_key(spec, genome.layer_method) for spec in genome.layers)


@dataclass(frozen=True)
class Genome:
    """A tailoring of an `n_layers`-layer family with `n_candidates` fine-tunes of one base.

    `layers` are the kept layers in output order (source indices strictly increasing).
    `method` is the mergekit method used for merged layers; it is global to a recipe.
    """

    n_layers: int
    n_candidates: int
    layers: tuple[LayerSpec, ...]
    method: str = "task_arithmetic"

    def __post_init__(self) -> None:
        if self.method not in MERGE_METHODS:
            raise GenomeError(MERGE_METHODS.unknown_message(self.method))
        # parameters the method does not use are canonicalised, so equal tailorings compare equal
        used = MERGE_METHODS.get(self.method).genome_params
        drop = {p: 1.0 for p in ("lam", "density") if p not in used}
        object.__setattr__(self, "layers", tuple(replace(s, **drop) for s in self.layers))
        self.validate()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def base_only(cls, n_layers: int, n_candidates: int, removed: Iterable[int] = ()) -> Genome:
        """The base model with `removed` layers cut out: the single-model pruning genome."""
        removed_set = _checked_removed(n_layers, removed)
        layers = tuple(LayerSpec(i) for i in range(n_layers) if i not in removed_set)
        return cls(n_layers, n_candidates, layers)

    @classmethod
    def from_choices(
        cls,
        n_layers: int,
        n_candidates: int,
        removed: Iterable[int],
        sources: Sequence[Sequence[int]],
        lams: Sequence[float] | None = None,
        densities: Sequence[float] | None = None,
        method: str = "task_arithmetic",
    ) -> Genome:
        """Build from per-original-layer choices (`sources[i]` for every i; removed ones ignored)."""
        removed_set = _checked_removed(n_layers, removed)
        if len(sources) != n_layers:
            raise GenomeError(f"need sources for all {n_layers} layers, got {len(sources)}")
        layers = []
        for i in range(n_layers):
            if i in removed_set:
                continue
            layers.append(
                LayerSpec(
                    i,
                    tuple(sources[i]),
                    lam=lams[i] if lams is not None else 1.0,
                    density=densities[i] if densities is not None else 1.0,
                )
            )
        return cls(n_layers, n_candidates, tuple(layers), method=method)

    # ---- views ----------------------------------------------------------------------------
    @property
    def kept(self) -> tuple[int, ...]:
        return tuple(spec.layer_idx for spec in self.layers)

    @property
    def removed(self) -> tuple[int, ...]:
        kept = set(self.kept)
        return tuple(i for i in range(self.n_layers) if i not in kept)

    @property
    def n_kept(self) -> int:
        return len(self.layers)

    @property
    def has_merges(self) -> bool:
        return any(spec.is_merge for spec in self.layers)

    @property
    def layer_method(self) -> str | None:
        """The mergekit method every sourced layer goes through; None for a passthrough genome."""
        return self.method if self.has_merges else None

    def to_dict(self) -> dict:
        """Plain JSON-able form; `Genome.from_dict` inverts it exactly."""
        return {
            "n_layers": self.n_layers,
            "n_candidates": self.n_candidates,
            "method": self.method,
            "layers": [
                {
                    "layer": s.layer_idx,
                    "sources": list(s.sources),
                    **({"lambda": s.lam} if s.is_merge else {}),
                    **({"density": s.density} if s.is_merge and s.density != 1.0 else {}),
                    **(
                        {"weights": list(s.weights)}
                        if s.is_merge and any(w != 1.0 for w in s.weights)
                        else {}
                    ),
                }
                for s in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Genome:
        try:
            layers = tuple(
                LayerSpec(
                    int(item["layer"]),
                    tuple(item.get("sources", ())),
                    lam=float(item.get("lambda", 1.0)),
                    density=float(item.get("density", 1.0)),
                    weights=tuple(item.get("weights", ())),
                )
                for item in data["layers"]
            )
            return cls(
                int(data["n_layers"]),
                int(data["n_candidates"]),
                layers,
                method=data.get("method", "task_arithmetic"),
            )
        except (KeyError, TypeError) as exc:
            raise GenomeError(f"malformed genome dict: missing or bad field {exc}") from exc

    @property
    def genome_id(self) -> str:
        """Stable short id of the tailoring (content hash), used for recipe names and caches."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def describe(self) -> list[str]:
        """One human-readable line per original layer: removed / base / cand j / merge(...)."""
        by_idx = {s.layer_idx: s for s in self.layers}
        lines = []
        for i in range(self.n_layers):
            spec = by_idx.get(i)
            if spec is None:
                lines.append("removed")
            elif not spec.sources:
                lines.append("base")
            elif len(spec.sources) == 1:
                lines.append(f"candidate {spec.sources[0]}")
            else:
                lines.append(
                    f"{self.method}({', '.join(map(str, spec.sources))}; lambda={spec.lam:.3g})"
                )
        return lines

    # ---- invariants ---------------------------------------------------------------------------
    def validate(self) -> None:
        if self.n_layers < 1:
            raise GenomeError(f"a family needs at least one layer, got n_layers={self.n_layers}")
        if self.n_candidates < 0:
            raise GenomeError(f"n_candidates must be >= 0, got {self.n_candidates}")
        if not self.layers:
            raise GenomeError(
                f"a genome must keep at least one of its {self.n_layers} layers; lower the removal target"
            )
        previous = -1
        for spec in self.layers:
            i = spec.layer_idx
            if not 0 <= i < self.n_layers:
                raise GenomeError(f"layer index {i} is out of range 0..{self.n_layers - 1}")
            if i <= previous:
                raise GenomeError(
                    f"kept layers must be strictly increasing (original order, no duplicates); "
                    f"layer {i} comes after {previous}"
                )
            previous = i
            if len(set(spec.sources)) != len(spec.sources):
                raise GenomeError(f"layer {i}: duplicate source in {spec.sources}")
            for s in spec.sources:
                if not 0 <= s < self.n_candidates:
                    raise GenomeError(
                        f"layer {i}: candidate {s} out of range; the family has "
                        f"{self.n_candidates} candidates (0..{self.n_candidates - 1})"
                    )
            if spec.is_merge:
                lo, hi = LAMBDA_RANGE
                if not lo < spec.lam <= hi:
                    raise GenomeError(f"layer {i}: lambda {spec.lam} outside ({lo}, {hi}]")
                lo, hi = DENSITY_RANGE
                if not lo < spec.density <= hi:
                    raise GenomeError(f"layer {i}: density {spec.density} outside ({lo}, {hi}]")
                if any(w <= 0 for w in spec.weights):
                    raise GenomeError(f"layer {i}: weights must be > 0, got {spec.weights}")


def _checked_removed(n_layers: int, removed: Iterable[int]) -> set[int]:
    removed_list = [int(r) for r in removed]
    removed_set = set(removed_list)
    if len(removed_set) != len(removed_list):
        raise GenomeError(f"duplicate index in removed layers {sorted(removed_list)}")
    bad = [r for r in removed_list if not 0 <= r < n_layers]
    if bad:
        raise GenomeError(f"removed layer(s) {bad} out of range 0..{n_layers - 1}")
    if len(removed_set) >= n_layers:
        raise GenomeError(
            f"removing {len(removed_set)} of {n_layers} layers leaves none; remove fewer"
        )
    return removed_set


def resolve_target(n_layers: int, *, layers: int | None = None, remove_fraction: float | None = None) -> int:
    """Number of layers to keep, from `layers` (kept) or `remove_fraction`; checked against n_layers."""
    if (layers is None) == (remove_fraction is None):
        raise GenomeError("give exactly one of a kept-layer count or a remove fraction")
    if remove_fraction is not None:
        if not 0.0 <= remove_fraction < 1.0:
            raise GenomeError(
                f"remove_fraction {remove_fraction} must be in [0, 1); 0.25 removes a quarter"
            )
        layers = n_layers - round(n_layers * remove_fraction)
    assert layers is not None
    if not 1 <= layers <= n_layers:
        quarter = n_layers - round(n_layers * 0.25)
        raise GenomeError(
            f"target of {layers} kept layers is impossible for a {n_layers}-layer family; "
            f"choose 1..{n_layers} kept layers (e.g. {quarter} removes 25%; {n_layers} keeps all "
            f"and only selects and merges)"
        )
    return layers
