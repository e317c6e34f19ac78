"""Genome <-> mergekit YAML recipe: the one interchange format (docs/ARCHITECTURE.md, "Recipe").

`genome_to_recipe` writes a recipe that stock `mergekit-yaml` (0.1.5) runs; `recipe_to_genome`
reads it back exactly. Our metadata rides under the top-level `gptailor:` key, which mergekit's
config model ignores. No torch, no nevergrad.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gptailor_merge.core.atomic import write_text_atomic
from gptailor_merge.core.errors import RecipeError
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.core.merge_methods import MERGE_METHODS, merge_method

META_KEY = "gptailor"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FamilyRefs:
    """What a recipe needs to know of a family: model references and the layer count."""

    base: str
    candidates: tuple[str, ...]
    n_layers: int
    names: tuple[str, ...] = ()

    @classmethod
    def of(cls, family: Any) -> FamilyRefs:
        """From a loaded `Family` (duck-typed, so recipes need no tensors)."""
        return cls(
            base=family.base.model_id,
            candidates=tuple(c.model_id for c in family.candidates),
            n_layers=family.n_layers,
            names=tuple(m.name for m in family.members),
        )

    def with_layers(self, n_layers: int) -> FamilyRefs:
        return FamilyRefs(self.base, self.candidates, n_layers, self.names)

    def model(self, source: int | None) -> str:
        """Model reference for a genome source: None is the base, j is candidate j."""
        return self.base if source is None else self.candidates[source]


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: the YAML mapping (mergekit config plus our metadata)."""

    data: dict

    @property
    def text(self) -> str:
        return _HEADER + yaml.dump(self.data, Dumper=_Dumper, sort_keys=False, width=100)

    @property
    def metadata(self) -> dict:
        return dict(self.data.get(META_KEY) or {})

    def with_metadata(self, **extra: Any) -> Recipe:
        data = dict(self.data)
        data[META_KEY] = {**self.metadata, **extra}
        return Recipe(data)

    def merge_config(self):
        """mergekit's own validated `MergeConfiguration` for this recipe."""
        from mergekit.config import MergeConfiguration

        try:
            return MergeConfiguration.model_validate(
                {k: v for k, v in self.data.items() if k != META_KEY}
            )
        except Exception as exc:  # pydantic ValidationError or mergekit's RuntimeError
            raise RecipeError(f"recipe is not a valid mergekit config: {exc}") from exc

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename) so a killed run never leaves half a recipe."""
        return write_text_atomic(path, self.text)

    @classmethod
    def from_text(cls, text: str, source: str = "<recipe>") -> Recipe:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{source}: not valid YAML ({exc}); fix the syntax") from exc
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: a recipe is a YAML mapping with `slices:`, got {type(data).__name__}")
        if "slices" not in data or "merge_method" not in data:
            raise RecipeError(
                f"{source}: a tailoring recipe needs `merge_method:` and `slices:` "
                f"(found keys: {', '.join(map(str, data)) or 'none'})"
            )
        for s_i, slice_ in enumerate(data["slices"] or []):
            for src in (slice_.get("sources") or []) if isinstance(slice_, dict) else []:
                rng = src.get("layer_range") if isinstance(src, dict) else None
                if rng is not None and not (isinstance(rng, list) and len(rng) == 2
                                            and all(type(x) is int for x in rng)):
                    raise RecipeError(f"{source}: slice {s_i}: layer_range {rng!r} must be two integers, "
                                      "e.g. [0, 4]; remove the quotes")
        recipe = cls(data)
        recipe.merge_config()
        return recipe

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file '{path}' does not exist")
        return cls.from_text(path.read_text(), source=str(path))

    def family_refs(self, n_layers: int | None = None) -> FamilyRefs:
        """The family this recipe tailors: from our metadata, else from its slices."""
        meta = self.metadata
        fam = meta.get("family") or {}
        base = self.data.get("base_model") or fam.get("base")
        if not base:
            raise RecipeError("recipe has no `base_model`; set it to the family's base model")
        candidates = tuple(fam.get("candidates") or _models_in_order(self.data, exclude=base))
        n = n_layers or meta.get("n_layers")
        if n is None:
            raise RecipeError(
                "recipe has no `gptailor.n_layers`; pass the family so its layer count is known"
            )
        return FamilyRefs(str(base), tuple(map(str, candidates)), int(n), tuple(fam.get("names") or ()))


def recipe_family_refs(recipe: Recipe) -> FamilyRefs:
    """`recipe.family_refs()`, and for a hand-written mergekit recipe (no `gptailor:` metadata)
    the layer count read from its base model's config, so any stock recipe can be evaluated."""
    try:
        return recipe.family_refs()
    except RecipeError:
        base = recipe.data.get("base_model")
        if not base:
            raise
    from transformers import AutoConfig

    try:
        n_layers = AutoConfig.from_pretrained(str(base)).num_hidden_layers
    except (OSError, ValueError) as exc:
        raise RecipeError(f"recipe has no `gptailor.n_layers` and its base_model {str(base)!r} has no "
                          f"readable config ({exc}); give base_model as a model folder or Hub id") from exc
    return recipe.family_refs(int(n_layers))


class _Dumper(yaml.SafeDumper):
    """Writes short lists of scalars (layer ranges, removed layers) inline, for readable recipes."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(x, (int, float, str)) for x in data) and len(data) <= 16
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)

_HEADER = (
    "# gptailor-merge recipe: run it with `mergekit-yaml THIS_FILE OUT_DIR` (mergekit 0.1.5).\n"
    "# Zero-length slices ([0, 0] / [L, L]) pin embeddings, final norm and LM head to the base.\n"
)


def _models_in_order(data: dict, exclude: str) -> list[str]:
    seen: list[str] = []
    for s in data.get("slices") or []:
        for src in s.get("sources") or []:
            m = str(src.get("model"))
            if m != exclude and m not in seen:
                seen.append(m)
    return seen


# ---- genome -> recipe -------------------------------------------------------------------------


def _runs(genome: Genome) -> list[list[LayerSpec]]:
    """Group kept layers into maximal runs of consecutive source layers with the same spec."""
    runs: list[list[LayerSpec]] = []
    for spec in genome.layers:
        if runs:
            last = runs[-1][-1]
            same = (last.sources, last.lam, last.density, last.weights) == (
                spec.sources, spec.lam, spec.density, spec.weights
            )
            if same and spec.layer_idx == last.layer_idx + 1:
                runs[-1].append(spec)
                continue
        runs.append([spec])
    return runs


def _merge_slice(refs: FamilyRefs, genome: Genome, lo: int, hi: int, spec: LayerSpec | None) -> dict:
    """A slice listing base and every candidate (same sources in every slice, docs/ARCHITECTURE.md), with
    the parameters the method's registry entry gives (the stitcher merges with the same ones)."""
    params = merge_method(genome.method).parameters(spec, len(refs.candidates))
    sources = []
    for model, source_params in zip((refs.base, *refs.candidates), params.per_source):
        entry: dict = {"model": model, "layer_range": [lo, hi]}
        if source_params:
            entry["parameters"] = dict(source_params)
        sources.append(entry)
    out: dict = {"sources": sources}
    if params.shared:
        out["parameters"] = dict(params.shared)
    return out


def genome_to_recipe(
    genome: Genome,
    refs: FamilyRefs,
    *,
    dtype: str = "float32",
    metadata: dict | None = None,
) -> Recipe:
    """Encode a genome as a mergekit recipe for the family `refs`."""
    if genome.n_layers != refs.n_layers or genome.n_candidates != len(refs.candidates):
        raise RecipeError(
            f"genome is for {genome.n_layers} layers / {genome.n_candidates} candidates, the "
            f"family has {refs.n_layers} / {len(refs.candidates)}"
        )
    runs = _runs(genome)
    L = genome.n_layers
    slices: list[dict] = []
    if genome.has_merges:
        merge_method = genome.method
        for run in runs:
            slices.append(_merge_slice(refs, genome, run[0].layer_idx, run[-1].layer_idx + 1, run[0]))
        if runs[0][0].sources:
            slices.insert(0, _merge_slice(refs, genome, 0, 0, None))
        if runs[-1][0].sources:
            slices.append(_merge_slice(refs, genome, L, L, None))
    else:
        merge_method = "passthrough"
        for run in runs:
            model = refs.model(run[0].sources[0] if run[0].sources else None)
            slices.append(
                {"sources": [{"model": model, "layer_range": [run[0].layer_idx, run[-1].layer_idx + 1]}]}
            )
        if runs[0][0].sources:
            slices.insert(0, {"sources": [{"model": refs.base, "layer_range": [0, 0]}]})
        if runs[-1][0].sources:
            slices.append({"sources": [{"model": refs.base, "layer_range": [L, L]}]})
    meta = {
        "version": FORMAT_VERSION,
        "genome_id": genome.genome_id,
        "method": genome.method,
        "n_layers": L,
        "n_kept": genome.n_kept,
        "removed": list(genome.removed),
        "family": {
            "base": refs.base,
            "candidates": list(refs.candidates),
            **({"names": list(refs.names)} if refs.names else {}),
        },
        **(metadata or {}),
    }
    data = {
        "merge_method": merge_method,
        "base_model": refs.base,
        "dtype": dtype,
        "slices": slices,
        META_KEY: meta,
    }
    return Recipe(data)


# ---- recipe -> genome -------------------------------------------------------------------------


def _plain_value(setting: Any, what: str) -> float:
    """The unfiltered value of a mergekit parameter setting (scalar or conditional list)."""
    if isinstance(setting, bool):
        raise RecipeError(f"{what}: expected a number, got {setting!r}")
    if isinstance(setting, (int, float)):
        return float(setting)
    if isinstance(setting, list) and setting and all(isinstance(c, dict) for c in setting):
        for cond in setting:
            if cond.get("filter") in (None, "*"):
                return _plain_value(cond.get("value"), what)
    raise RecipeError(f"{what}: cannot read {setting!r} as one number (gradients are not tailorings)")


def recipe_to_genome(recipe: Recipe, refs: FamilyRefs | None = None) -> Genome:
    """Decode a recipe back into the genome it encodes (exact inverse of `genome_to_recipe`)."""
    refs = refs or recipe.family_refs()
    recipe.merge_config()
    data = recipe.data
    L = refs.n_layers
    index = {refs.base: None, **{m: j for j, m in enumerate(refs.candidates)}}
    method = str(data["merge_method"])
    genome_method = recipe.metadata.get("method", method if method in MERGE_METHODS else "task_arithmetic")
    global_params = data.get("parameters") or {}
    layers: list[LayerSpec] = []
    for s_i, slice_ in enumerate(data["slices"]):
        sources = slice_.get("sources") or []
        ranges = {tuple(src["layer_range"]) for src in sources}
        if len(ranges) != 1:
            raise RecipeError(f"slice {s_i}: sources cover different layer ranges {sorted(ranges)}")
        lo, hi = ranges.pop()
        if not 0 <= lo <= hi <= L:
            raise RecipeError(
                f"slice {s_i}: layer_range [{lo}, {hi}] is outside the family's {L} layers "
                f"(valid ranges lie within [0, {L}])"
            )
        for src in sources:
            if str(src["model"]) not in index:
                raise RecipeError(
                    f"slice {s_i}: model '{src['model']}' is not in the family "
                    f"(base {refs.base}, candidates {list(refs.candidates)})"
                )
        if lo == hi:
            continue  # a zero-length boundary slice: pins embeddings / head to the base
        if method == "passthrough":
            if len(sources) != 1:
                raise RecipeError(f"slice {s_i}: a passthrough slice has exactly one source")
            j = index[str(sources[0]["model"])]
            layers.extend(LayerSpec(i, () if j is None else (j,)) for i in range(lo, hi))
            continue
        if method not in MERGE_METHODS:
            raise RecipeError(
                f"merge_method {method!r} is not a tailoring; use passthrough or one of "
                f"{', '.join(MERGE_METHODS.names())}"
            )
        slice_params = {**global_params, **(slice_.get("parameters") or {})}
        chosen: list[int] = []
        weights: list[float] = []
        densities: list[float] = []
        for src in sources:
            j = index[str(src["model"])]
            if j is None:
                continue
            params = {**slice_params, **(src.get("parameters") or {})}
            w = _plain_value(params.get("weight", 0.0), f"slice {s_i} weight")
            if w > 0:
                chosen.append(j)
                weights.append(w)
                densities.append(_plain_value(params.get("density", 1.0), f"slice {s_i} density"))
        lam = _plain_value(slice_params.get("lambda", 1.0), f"slice {s_i} lambda")
        density = densities[0] if densities else 1.0
        order = sorted(range(len(chosen)), key=chosen.__getitem__)
        for i in range(lo, hi):
            layers.append(
                LayerSpec(
                    i,
                    tuple(chosen[k] for k in order),
                    lam=lam,
                    density=density,
                    weights=tuple(weights[k] for k in order),
                )
            )
    try:
        return Genome(L, len(refs.candidates), tuple(layers), method=genome_method)
    except Exception as exc:
        raise RecipeError(f"recipe does not describe a valid tailoring: {exc}") from exc


def lean_recipe(recipe: Recipe, base: str) -> Recipe:
    """The lean form of `recipe` (what a mergekit-based search would materialize, faster): each
    slice lists only the sources it uses (the base and the candidates of nonzero weight), where `genome_to_recipe` lists every candidate in every
    slice (weight 0 where unused) because mergekit takes the LM head and final norm from the last
    slice, but only as many of its sources as the first slice has. Here the first and last slices
    are zero-length base-only slices ([0, 0], [L, L]), so that rule takes the base's embeddings,
    head and norm. tests/test_speed_bench.py checks through mergekit that the two give the same model
    (benchmarks/speed.py's `check_lean_recipes` on a trace's own genomes)."""
    import copy

    data = copy.deepcopy(recipe.data)
    if data["merge_method"] == "passthrough":  # one source per slice already
        return recipe

    def used(src: dict) -> bool:
        weight = (src.get("parameters") or {}).get("weight", 1.0)
        return str(src["model"]) == base and data["merge_method"] != "linear" or weight != 0.0

    def pin(at: int) -> dict:
        pinned: dict = {"sources": [{"model": base, "layer_range": [at, at]}]}
        if data["merge_method"] == "linear":
            pinned["sources"][0]["parameters"] = {"weight": 1.0}
        else:
            pinned["parameters"] = {"lambda": 1.0}
        return pinned

    slices = [dict(s, sources=[src for src in s["sources"] if used(src)]) for s in data["slices"]]
    slices = [s for s in slices if s["sources"]]
    n_layers = int(recipe.metadata["n_layers"])
    data["slices"] = [pin(0), *[s for s in slices if s["sources"][0]["layer_range"][0]
                                != s["sources"][0]["layer_range"][1]], pin(n_layers)]
    return Recipe(data)
