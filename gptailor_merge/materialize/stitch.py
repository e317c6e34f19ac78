"""In-memory stitcher: builds a tailored model from the family's tensors, loaded once.

The search's fast path (docs/ARCHITECTURE.md, "Two materializers"). Kept base layers are the base model's own modules,
selected layers views of a candidate's memory-mapped tensors, merged layers computed once with
mergekit's own merge methods (task arithmetic: its op-for-op copy in `fast_merge`, bitwise equal);
both cached (LRU), so a candidate costs a module swap. Proven equal to the mergekit backend in
tests/test_stitch.py and tests/test_fast_merge.py.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptailor_merge.core.errors import GenomeError
from gptailor_merge.core.genome import Genome, LayerSpec, layer_key
from gptailor_merge.core.merge_methods import merge_method
from gptailor_merge.core.outputs import staged_folder
from gptailor_merge.family.architecture import DecoderLayout, set_config, tailored_config
from gptailor_merge.family.family import Family, copy_tokenizer

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise GenomeError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}") from None


class Stitcher:
    """Holds the base model and a cache of tailored layer modules; `build(genome)` swaps them in.

    The returned model is the same object for every genome (its layer list is replaced), so use
    one candidate at a time. `merge_dtype` is the dtype merges are computed in (the recipe's dtype).
    """

    def __init__(
        self,
        family: Family,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        cache_size: int = 256,
        model: nn.Module | None = None,
    ) -> None:
        """`model`: the base as an already-loaded causal LM (e.g. built in GPU memory for
        benchmarks/gpu_check.sh); by default it is loaded from `family.base.path`."""
        from transformers import AutoModelForCausalLM

        self.family = family
        self.device = torch.device(device)
        self.dtype = torch_dtype(dtype)
        self.cache_size = cache_size
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(family.base.path, dtype=self.dtype)
        self.model = model
        self.model.to(self.device).eval()
        self.layout = DecoderLayout.of_family(family)
        self._base_layers = list(self.layout.layers(self.model))
        self._base_config = copy.deepcopy(self.model.config)
        self._cache: OrderedDict[tuple, nn.Module] = OrderedDict()
        # layers built / served from the cache; build_s: host seconds in build() (materialization)
        self.stats: dict[str, float] = {"built": 0, "cache_hits": 0, "build_s": 0.0}
        self._workspaces: dict[str, Any] = {}  # merge method -> its fast-path workspace

    # ---- layers -----------------------------------------------------------------------------
    def _merged_tensors(self, spec: LayerSpec, method: str) -> dict[str, torch.Tensor]:
        """Layer tensors exactly as the recipe's mergekit method computes them, with the slice
        parameters the recipe writer uses (`MergeMethod.parameters`, one definition for both)."""
        from mergekit.merge_methods.api import merge_tensors

        fam = self.family
        entry = merge_method(method)
        params = entry.parameters(spec, fam.n_candidates).merge_tensors_parameters(entry.base_is_input)
        workspace = None
        if entry.workspace is not None:  # the same ops as mergekit's, without its temporaries
            workspace = self._workspaces.get(method) or self._workspaces.setdefault(method, entry.workspace())
        out = {}
        for name in fam.layer_tensor_names(spec.layer_idx):
            tensors = [m.tensor(name).to(self.device, self.dtype) for m in fam.members]
            if workspace is not None:
                merged = workspace.merge_group(tensors, params)
            else:
                merged = merge_tensors(
                    tensors,
                    method,
                    parameters=params,
                    base_index=None if entry.base_is_input else 0,
                    name=name,
                    dtype=self.dtype,
                    out_dtype=self.dtype,
                )
            out[self.layout.relative(spec.layer_idx, name)] = merged
        return out

    def _selected_tensors(self, spec: LayerSpec) -> dict[str, torch.Tensor]:
        member = self.family.candidates[spec.sources[0]]
        return {
            self.layout.relative(spec.layer_idx, name): member.tensor(name).to(self.device, self.dtype)
            for name in self.family.layer_tensor_names(spec.layer_idx)
        }

    def _layer_with(self, layer_idx: int, tensors: dict[str, torch.Tensor]) -> nn.Module:
        """A copy of the base layer whose parameters are `tensors`, as they are: a merge's fresh
        tensors, or a selection's memory-mapped candidate weights (read-only use: a stitched
        model is for scoring and saving). deepcopy + load_state_dict copied every tensor twice."""
        base = self._base_layers[layer_idx]
        params = dict(base.named_parameters())
        memo = {}
        for name, tensor in tensors.items():
            param = params.get(name)
            if param is None or tuple(tensor.shape) != tuple(param.shape):
                raise GenomeError(
                    f"layer {layer_idx}: tensor {name!r} {tuple(tensor.shape)} does not match the "
                    f"base layer's parameters; the family's tensors and its architecture disagree"
                )
            data = tensor.to(param.device, param.dtype)
            memo[id(param)] = nn.Parameter(data, requires_grad=param.requires_grad)
        return copy.deepcopy(base, memo)

    def layer_module(self, spec: LayerSpec, method: str | None) -> nn.Module:
        """The decoder layer for `spec`; `method` None means passthrough (no merging anywhere)."""
        if not spec.sources:
            return self._base_layers[spec.layer_idx]  # base + 0 * delta is the base, exactly
        key = layer_key(spec, method)
        module = self._cache.get(key)
        if module is not None:
            self._cache.move_to_end(key)
            self.stats["cache_hits"] += 1
            return module
        with torch.no_grad():
            tensors = (
                self._selected_tensors(spec) if method is None else self._merged_tensors(spec, method)
            )
            module = self._layer_with(spec.layer_idx, tensors)
        self.stats["built"] += 1
        self._cache[key] = module
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return module

    def clear_cache(self) -> None:
        """Drop every cached layer (their memory); later builds compute them again."""
        self._cache.clear()

    # ---- models -----------------------------------------------------------------------------
    def build(self, genome: Genome) -> nn.Module:
        """Swap the genome's layers into the model and return it (eval mode, same object)."""
        start = time.perf_counter()
        try:
            return self._build(genome)
        finally:
            self.stats["build_s"] += time.perf_counter() - start

    def _build(self, genome: Genome) -> nn.Module:
        fam = self.family
        if (genome.n_layers, genome.n_candidates) != (fam.n_layers, fam.n_candidates):
            raise GenomeError(
                f"genome is for {genome.n_layers} layers / {genome.n_candidates} candidates, "
                f"the family has {fam.n_layers} / {fam.n_candidates}"
            )
        modules = [self.layer_module(spec, genome.layer_method) for spec in genome.layers]
        self.layout.set_layers(self.model, modules)
        set_config(self.model, tailored_config(self._base_config, genome.kept))
        return self.model

    def save(self, genome: Genome, out_dir: str | os.PathLike, *, overwrite: bool = False,
             recipe_text: str | None = None) -> Path:
        """Write the stitched model as a normal Hugging Face folder (config, safetensors, tokenizer,
        and `recipe_text` as mergekit_config.yml)."""
        with staged_folder(out_dir, overwrite=overwrite, reads=[m.path for m in self.family.members]) as stage:
            self.build(genome).save_pretrained(stage.tmp, safe_serialization=True)
            copy_tokenizer(self.family.base.path, stage.tmp)
            if recipe_text is not None:
                (stage.tmp / "mergekit_config.yml").write_text(recipe_text)
        return stage.out
