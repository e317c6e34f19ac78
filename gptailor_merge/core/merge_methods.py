"""The mergekit methods a merged layer may use: one `MERGE_METHODS` entry each (docs/ARCHITECTURE.md).

An entry states the layer parameters the method reads (its genome parameters), which of them the
search varies, its label in reports, and owns `parameters()`: a merged slice's mergekit parameters,
which the recipe writer puts into YAML and the stitcher hands to mergekit's `merge_tensors`, so both
backends merge with the same numbers by construction. Where each value goes (slice, or per source
with or without the base) is read from mergekit's own `ParameterSpec` scopes, checked at import.
Adding a method: one `_register(...)` call plus its stitcher = mergekit test (tests/test_stitch.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gptailor_merge.core.registry import Registry


class LayerParams(Protocol):
    """What a method reads of a merged layer: `genome.LayerSpec` has these fields. A protocol,
    not the class, because genome.py builds on this registry (its ranges, its method names)."""

    sources: tuple[int, ...]
    lam: float
    density: float
    weights: tuple[float, ...]


@dataclass(frozen=True)
class GenomeParam:
    """A per-layer merge parameter of a `LayerSpec`: its mergekit name, valid range and symbol."""

    field: str  # LayerSpec attribute
    mergekit: str  # mergekit parameter name
    valid: tuple[float, float]  # (low, high]: what a genome may hold
    symbol: str  # how reports write it


GENOME_PARAMS: dict[str, GenomeParam] = {
    p.field: p
    for p in (
        GenomeParam("lam", "lambda", (0.0, 2.0), "λ"),
        GenomeParam("density", "density", (0.0, 1.0), "density"),
        GenomeParam("weights", "weight", (0.0, float("inf")), "weight"),
    )
}
"""Every per-layer parameter a genome can carry; an entry reads a subset of them."""

SEARCHABLE = ("lam", "density")
"""Genome parameters the search space can vary (bounds: `SearchConfig.lambda_range` / `density_range`)."""


@dataclass(frozen=True)
class SliceParameters:
    """mergekit parameters of one merged slice: `shared` on the slice, `per_source[0]` on the base
    source (empty unless the method weighs the base as an input), `per_source[1 + j]` on candidate j."""

    shared: dict[str, float]
    per_source: tuple[dict[str, float], ...]

    def merge_tensors_parameters(self, base_is_input: bool) -> dict[str, Any]:
        """The same values as `merge_tensors(parameters=...)` takes them: scalars for shared ones,
        lists in input order for per-source ones (without the base unless it is an input)."""
        sources = self.per_source if base_is_input else self.per_source[1:]
        out: dict[str, Any] = dict(self.shared)
        for name in sources[0] if sources else {}:
            out[name] = [params[name] for params in sources]
        return out


@dataclass(frozen=True)
class MergeMethod:
    """One mergekit method as a tailoring uses it.

    `genome_params`: the LayerSpec fields the method reads (others are canonicalised to 1.0 in a
    Genome, so tailorings that differ only in unused values compare equal). `searched`: the subset
    the search varies. `fixed`: other mergekit parameters written explicitly with one value.
    `workspace`: optional factory of an object with `merge_group(tensors, parameters)` that
    computes bitwise what mergekit does, faster (the stitcher's fast path).
    """

    name: str
    genome_params: tuple[str, ...]
    searched: tuple[str, ...]
    label: str
    fixed: Mapping[str, float] = field(default_factory=dict)
    workspace: Callable[[], Any] | None = None
    base_is_input: bool = False  # from mergekit: the base is one more weighted input (linear)
    scopes: Mapping[str, str] = field(default_factory=dict)  # mergekit parameter -> scope

    def parameters(self, spec: LayerParams | None, n_candidates: int) -> SliceParameters:
        """The one definition of a merged slice's parameters. `spec` None: a boundary slice that
        takes everything from the base (all candidate weights 0)."""
        selected = {} if spec is None else dict(zip(spec.sources, spec.weights))
        values: dict[str, tuple[Any, Any]] = {}  # mergekit name -> (base value, per-candidate fn)
        if "weights" in self.genome_params:
            values["weight"] = (0.0 if selected else 1.0, lambda j: float(selected.get(j, 0.0)))
        if "density" in self.genome_params:
            density = float(spec.density) if spec is not None else 1.0
            values["density"] = (None, lambda j: density if j in selected else 1.0)
        for name, value in self.fixed.items():
            values[name] = (None, lambda j, v=float(value): v)
        shared: dict[str, float] = {}
        if "lam" in self.genome_params:
            shared["lambda"] = float(spec.lam) if spec is not None else 1.0
        base: dict[str, float] = {}
        candidates: list[dict[str, float]] = [{} for _ in range(n_candidates)]
        for name, (base_value, per_candidate) in values.items():
            if self.scopes[name] == "shared":
                shared[name] = per_candidate(0)
                continue
            if self.scopes[name] == "input":
                base[name] = base_value if base_value is not None else per_candidate(None)
            for j in range(n_candidates):
                candidates[j][name] = per_candidate(j)
        return SliceParameters(shared, (base, *candidates))

    def describe(self, spec: LayerParams, parts: Sequence[str]) -> str:
        """Report text of a merged layer: `ties: chat + math (λ=0.7, density=0.5)`."""
        params = [f"{GENOME_PARAMS[p].symbol}={getattr(spec, p):.3g}"
                  for p in self.genome_params if p != "weights"]
        return f"{self.label}: {' + '.join(parts)}" + (f" ({', '.join(params)})" if params else "")


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method")


def _register(name: str, genome_params: tuple[str, ...], searched: tuple[str, ...], *,
              label: str | None = None, fixed: Mapping[str, float] | None = None,
              workspace: Callable[[], Any] | None = None) -> None:
    """Add an entry, checked against mergekit's own definition of the method (fails at import)."""
    from mergekit import merge_methods
    from mergekit.merge_methods.base import BasePolicy

    try:
        spec = merge_methods.get(name).spec
    except RuntimeError as exc:
        raise ValueError(f"mergekit has no merge method {name!r}; drop its MERGE_METHODS entry") from exc
    scopes = {p.name: str(p.scope.value) for p in spec.parameters}
    wanted = [GENOME_PARAMS[p].mergekit for p in genome_params] + list(fixed or {})
    missing = [p for p in wanted if p not in scopes]
    unknown = [p for p in (*genome_params, *searched) if p not in GENOME_PARAMS]
    if missing or unknown or not set(searched) <= set(genome_params) - {"weights"}:
        raise ValueError(f"merge method {name!r}: mergekit does not declare {missing}, or the "
                         f"genome parameters {genome_params} / searched {searched} are not "
                         f"among {list(GENOME_PARAMS)}")
    MERGE_METHODS.add(name, MergeMethod(
        name, tuple(genome_params), tuple(searched), label or name, dict(fixed or {}), workspace,
        base_is_input=spec.contract.base == BasePolicy.IGNORED, scopes=scopes))


def _task_arithmetic_workspace() -> Any:
    from gptailor_merge.core.fast_merge import TaskArithmeticWorkspace

    return TaskArithmeticWorkspace()


# the paper's method: B + lambda * sum_j w_j (C_j - B)
_register("task_arithmetic", ("lam", "weights"), ("lam",), workspace=_task_arithmetic_workspace)
# TIES: magnitude pruning to `density`, sign consensus, lambda-scaled
_register("ties", ("lam", "density", "weights"), ("lam", "density"))
# weighted average; the base is an input with weight 1 where no candidate is chosen
_register("linear", ("weights",), ())
# Model Breadcrumbs with TIES: drops the largest `gamma` and the smallest deltas down to `density`
# (deterministic); gamma stays at mergekit's default, written into recipes so they state it
_register("breadcrumbs_ties", ("lam", "density", "weights"), ("lam", "density"), fixed={"gamma": 0.01})


def merge_method(name: str) -> MergeMethod:
    """The entry for `name`; a KeyError with a did-you-mean and the known names otherwise."""
    return MERGE_METHODS.get(name)


def searched_params(methods: Sequence[str]) -> tuple[str, ...]:
    """The genome parameters a search over `methods` varies, in `SEARCHABLE` order."""
    wanted = {p for m in methods for p in MERGE_METHODS.get(m).searched}
    return tuple(p for p in SEARCHABLE if p in wanted)
