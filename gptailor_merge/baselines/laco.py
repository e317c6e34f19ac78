"""LaCo layer collapse (Yang et al. 2024, arXiv 2402.11187): merge rear layers into a prior one.

From the top, layer l absorbs the next m layers, theta_l + sum_k (theta_{l+k} - theta_l) (RDSC);
the collapse is kept when the final hidden states on calibration text stay close to the original
model's. In memory only: stock mergekit merges one layer index across models and cannot express
"layer l plus other layers' deltas", so the model is saved as a folder, never as a recipe.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from gptailor_merge.architecture import DecoderLayout
from gptailor_merge.baselines.core import BASELINES, BaselineResult, Calibration
from gptailor_merge.baselines.hidden import final_hidden_batches, token_cosine
from gptailor_merge.errors import ConfigError
from gptailor_merge.materialize import copy_tokenizer
from gptailor_merge.outputs import commit_folder, prepare_output, temp_sibling
from gptailor_merge.recipe import Recipe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Slot:
    """One layer of the collapsing model: the original index whose place it holds, and its
    collapsed module (None: the base's own layer `rep`)."""

    rep: int
    module: nn.Module | None = None


def rdsc(group: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """theta_l + sum_{k=1..m} (theta_{l+k} - theta_l), in float32, summed as
    theta_{l+1} + sum_{k>=2} (theta_{l+k} - theta_l) so that m = 1 gives theta_{l+1} exactly."""
    prior, rear = group[0], group[1:]
    out = {}
    for name, theta in prior.items():
        if not theta.is_floating_point():
            out[name] = theta
            continue
        acc = rear[0][name].float().clone()
        for layer in rear[1:]:
            acc += layer[name].float() - theta.float()
        out[name] = acc.to(theta.dtype)
    return out


class _Collapser:
    """The base's layers, the reference final hidden states, and model builds for slot lists."""

    def __init__(self, calib: Calibration) -> None:
        self.calib = calib
        self.layout = DecoderLayout.of_family(calib.family)
        self.base_layers = list(self.layout.layers(calib.stitcher.build(calib.full_genome())))

    @cached_property
    def reference(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The uncollapsed base's final hidden states, per batch."""
        return list(self._final_hidden(self.calib.stitcher.build(self.calib.full_genome())))

    def _final_hidden(self, model: nn.Module):
        c = self.calib
        return final_hidden_batches(model, c.family, c.tokenizer, c.texts,
                                    batch_size=c.batch_size, max_length=c.max_length)

    def tensors(self, slot: _Slot) -> dict[str, torch.Tensor]:
        return (slot.module or self.base_layers[slot.rep]).state_dict()

    def collapse(self, group: list[_Slot]) -> _Slot:
        """The rear slots merged into the first; it takes the top slot's place (exact for m=1)."""
        module = copy.deepcopy(self.base_layers[group[-1].rep])
        module.load_state_dict(rdsc([self.tensors(s) for s in group]))
        return _Slot(group[-1].rep, module)

    def build(self, slots: list[_Slot]) -> nn.Module:
        c = self.calib
        kept = {s.rep for s in slots}
        model = c.stitcher.build(c.base_genome([i for i in range(c.family.n_layers) if i not in kept]))
        layers = list(self.layout.layers(model))
        for position, slot in enumerate(slots):
            if slot.module is not None:
                layers[position] = slot.module
        self.layout.set_layers(model, layers)
        return model

    def similarity(self, slots: list[_Slot]) -> float:
        """Mean over real tokens of cos(final hidden state, original's); identical states give 1.0."""
        reference = self.reference  # first: computing it rebuilds the full model
        total, count = 0.0, 0
        for (hidden, mask), (ref, _) in zip(self._final_hidden(self.build(slots)), reference, strict=True):
            total += float(token_cosine(hidden, ref).double()[mask].sum())
            count += int(mask.sum())
        return total / count


@BASELINES.register("laco")
def laco(calib: Calibration, n_remove: int, *, threshold: float = 0.65, merge_layers: int = 3,
         interval: int = 2, lowest: int = 1) -> BaselineResult:
    """LaCo until `n_remove` layers are gone. `merge_layers` (m, the paper's C - 1) rear layers
    per collapse (fewer for the last one, to hit the target exactly); after a kept collapse the
    next prior layer is `interval` lower (I), after a rejected one 1 lower; layers below `lowest`
    (H) never absorb others. A collapse is kept when the similarity is >= `threshold` (T), so
    T = 1.0 keeps exactly-lossless collapses only. Raises ConfigError if the target is not met."""
    if merge_layers < 1 or interval < 1 or lowest < 0:
        raise ConfigError(f"LaCo needs merge_layers >= 1, interval >= 1, lowest >= 0; got "
                          f"{merge_layers}, {interval}, {lowest}")
    collapser = _Collapser(calib)
    slots = [_Slot(i) for i in range(calib.family.n_layers)]
    removed, trials = 0, []
    position = len(slots)
    bar = tqdm(desc="laco", disable=not calib.progress)
    while removed < n_remove:
        m = min(merge_layers, n_remove - removed)
        position = min(position, len(slots) - 1 - m)
        if position < lowest:
            break
        group = slots[position : position + m + 1]
        trial = [*slots[:position], collapser.collapse(group), *slots[position + m + 1 :]]
        sim = collapser.similarity(trial)
        accepted = sim >= threshold
        trials.append({"layers": [s.rep for s in group], "similarity": round(sim, 9), "accepted": accepted})
        logger.debug("laco: collapse %s -> similarity %.6f (%s)", trials[-1]["layers"], sim,
                     "kept" if accepted else "rejected")
        bar.update(1)
        if accepted:
            slots, removed = trial, removed + m
            position -= interval
        else:
            position -= 1
    bar.close()
    calib.stitcher.build(calib.full_genome())
    if removed < n_remove:
        best = max((t["similarity"] for t in trials if not t["accepted"]), default=float("nan"))
        raise ConfigError(
            f"LaCo removed only {removed} of {n_remove} layers at threshold {threshold}: no further "
            f"collapse keeps the final hidden states' cosine similarity >= {threshold} (best "
            f"rejected: {best:.4f}). Lower the threshold (--laco-threshold) or remove fewer layers."
        )
    kept = {s.rep for s in slots}
    genome = calib.base_genome([i for i in range(calib.family.n_layers) if i not in kept])
    collapsed = {s.rep: {k: v.detach().clone() for k, v in s.module.state_dict().items()}
                 for s in slots if s.module is not None}
    details = {"threshold": threshold, "merge_layers": merge_layers, "interval": interval,
               "lowest": lowest, "final_hidden": "normed last hidden state, mean over real tokens",
               "trials": trials}
    return BaselineResult("laco", genome, details, collapsed)


def collapsed_model(calib: Calibration, result: BaselineResult) -> nn.Module:
    """The stitcher's model with LaCo's collapsed layers swapped in (the stitcher's shared object)."""
    collapser = _Collapser(calib)
    slots = []
    for rep in result.genome.kept:
        tensors = (result.collapsed or {}).get(rep)
        module = None
        if tensors is not None:
            module = copy.deepcopy(collapser.base_layers[rep])
            module.load_state_dict(tensors)
        slots.append(_Slot(rep, module))
    return collapser.build(slots)


def save_collapsed(calib: Calibration, result: BaselineResult, out_dir: str | os.PathLike, *,
                   overwrite: bool = False, recipe: Recipe | None = None) -> Path:
    """Write the collapsed model as a Hugging Face folder (config, safetensors, tokenizer), plus
    `recipe` (its removal set) as `laco_removal_recipe.yaml`; atomic (temp folder + rename)."""
    out = prepare_output(out_dir, overwrite, reads=[m.path for m in calib.family.members])
    tmp = temp_sibling(out)
    try:
        collapsed_model(calib, result).save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer(calib.family.base.path, tmp)
        if recipe is not None:
            (tmp / "laco_removal_recipe.yaml").write_text(recipe.text)
        return commit_folder(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        calib.stitcher.build(calib.full_genome())
