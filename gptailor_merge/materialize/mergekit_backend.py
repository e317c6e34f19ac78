"""mergekit backend: a recipe becomes a model folder exactly as stock `mergekit-yaml` makes it.

The reference materializer (what users run). Writes into a temporary sibling folder and renames it
into place, so a killed merge never leaves a folder that looks complete. No scoring, no search.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gptailor_merge.core.errors import RecipeError
from gptailor_merge.core.outputs import local_reads, prepare_output, staged_folder
from gptailor_merge.family.family import copy_tokenizer
from gptailor_merge.materialize.recipe import Recipe

logger = logging.getLogger(__name__)

def materialize_with_mergekit(
    recipe: Recipe,
    out_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    overwrite: bool = False,
    quiet: bool = True,
) -> Path:
    """Run `mergekit.merge.run_merge` on the recipe into `out_dir`; returns the folder."""
    from mergekit.merge import MergeOptions, run_merge

    config = recipe.merge_config()
    with staged_folder(out_dir, overwrite=overwrite, reads=local_reads(recipe.data)) as stage:
        tmp = stage.tmp
        options = MergeOptions(device=device, copy_tokenizer=True, quiet=quiet, write_model_card=True)
        try:
            run_merge(config, str(tmp), options)
        except Exception as exc:
            if "layer_types" in str(exc):
                raise RecipeError(
                    "mergekit 0.1.5 cannot change the layer count of a model whose config lists "
                    "`layer_types` (Qwen2, Qwen3, Gemma2/3, ...) under transformers 5: it keeps the "
                    "old list. Use `--backend stitch` (same weights) for this architecture."
                ) from exc
            raise
        (tmp / "mergekit_config.yml").write_text(recipe.text)
        base = config.base_model
        if base is not None and Path(str(base.model.path)).is_dir():
            copy_tokenizer(Path(str(base.model.path)), tmp)
    return stage.out


def materialize_recipe(
    recipe_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    backend: str = "mergekit",
    device: str = "cpu",
    overwrite: bool = False,
    quiet: bool = True,
) -> Path:
    """Materialize a recipe file with either backend (the CLI's `materialize`)."""
    from gptailor_merge.core.config import check_device
    from gptailor_merge.family.family import Family
    from gptailor_merge.materialize.recipe import recipe_to_genome
    from gptailor_merge.materialize.stitch import Stitcher

    if backend not in ("mergekit", "stitch"):
        raise ValueError(f"unknown backend {backend!r}; use mergekit or stitch")
    recipe = Recipe.load(recipe_path)
    check_device(device, "--device")
    prepare_output(out_dir, overwrite, reads=local_reads(recipe.data))
    # cheap checks before any weight loads: models exist, shapes agree, layer ranges fit
    refs = recipe.family_refs(n_layers=None if recipe.metadata.get("n_layers") else _layers_of(recipe))
    family = Family.load(refs.base, refs.candidates)
    genome = recipe_to_genome(recipe, refs.with_layers(family.n_layers))
    if backend == "mergekit":
        return materialize_with_mergekit(recipe, out_dir, device=device, overwrite=overwrite, quiet=quiet)
    stitcher = Stitcher(family, device=device, dtype=recipe.data.get("dtype") or "float32")
    return stitcher.save(genome, out_dir, overwrite=overwrite, recipe_text=recipe.text)


def _layers_of(recipe: Recipe) -> int:
    from gptailor_merge.family.family import load_model_config, resolve_model_path

    return int(load_model_config(resolve_model_path(str(recipe.data["base_model"]))).num_hidden_layers)
