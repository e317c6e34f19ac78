"""The GPTailor authors' published search results (auto-merge-llm JSON) as genomes and recipes.

Keys: `remove_idx_K`, `layer_{i}_candidate_{j}` (1 = candidate j contributes), and
`layer_{i}_merge_scale_factor` (task-arithmetic lambda when two or more contribute);
`layer_{i}_output_scale` is searched there but never applied, so it is ignored here too.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from gptailor_merge.core.errors import GenomeError
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.materialize.recipe import FamilyRefs, Recipe, genome_to_recipe

LLAMA2_13B_FAMILY = FamilyRefs(
    base="meta-llama/Llama-2-13b-hf",
    candidates=(
        "WizardLMTeam/WizardLM-13B-V1.2",
        "vanillaOVO/WizardMath-13B-V1.0",
        "layoric/llama-2-13b-code-alpaca",
    ),
    n_layers=40,
    names=("llama-2-13b", "wizardlm-13b", "wizardmath-13b", "code-alpaca-13b"),
)


def paper_config_to_genome(config: dict, n_layers: int, n_candidates: int) -> Genome:
    """Decode one published search configuration into a task-arithmetic genome."""
    removed = sorted(int(v) for k, v in config.items() if k.startswith("remove_idx_"))
    if len(set(removed)) != len(removed):
        raise GenomeError(f"published config removes a layer twice: {removed}")
    layers = []
    for i in range(n_layers):
        if i in removed:
            continue
        sources = tuple(
            j for j in range(n_candidates) if int(config.get(f"layer_{i}_candidate_{j}", 0)) == 1
        )
        lam = float(config.get(f"layer_{i}_merge_scale_factor", 1.0)) if len(sources) > 1 else 1.0
        layers.append(LayerSpec(i, sources, lam=lam))
    extra = [k for k in config if re.fullmatch(r"layer_(\d+)_.*", k) and int(k.split("_")[1]) >= n_layers]
    if extra:
        raise GenomeError(f"published config names layers beyond {n_layers}: {extra[:3]}")
    return Genome(n_layers, n_candidates, tuple(layers), method="task_arithmetic")


def paper_recipe(path: str | os.PathLike, refs: FamilyRefs = LLAMA2_13B_FAMILY, dtype: str = "float16") -> Recipe:
    """The recipe for one published configuration file, for the family `refs`."""
    path = Path(path)
    genome = paper_config_to_genome(json.loads(path.read_text()), refs.n_layers, len(refs.candidates))
    return genome_to_recipe(
        genome,
        refs,
        dtype=dtype,
        metadata={"source": f"GPTailor paper (arXiv 2506.20480), published config {path.parent.name}/{path.name}"},
    )
