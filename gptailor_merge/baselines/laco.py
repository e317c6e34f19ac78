"""LaCo layer collapse (Yang et al. 2024, arXiv 2402.11187): merge rear layers into a prior one.

From the top, the prior layer l absorbs the next m = C - 1 layers, whose places are removed: its
projection weights become theta_l + sum_k (theta_{l+k} - theta_l) (RDSC), its norms stay its own.
A collapse is kept when the mean over calibration sentences of the cosine similarity of the final
layer's representations (collapsed vs original model) exceeds T. Where T cannot reach the target,
T (then I, then C) is swept and the sweep is reported. In memory only: stock mergekit merges one
layer index across models and cannot express "layer l plus other layers' deltas", so the model is
saved as a folder, never as a recipe.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from gptailor_merge.baselines.calibration import final_hidden_batches
from gptailor_merge.baselines.core import BASELINES, BaselineResult, Calibration
from gptailor_merge.core.errors import ConfigError, GenomeError
from gptailor_merge.core.outputs import staged_folder
from gptailor_merge.family.architecture import DecoderLayout
from gptailor_merge.family.family import copy_tokenizer
from gptailor_merge.materialize.recipe import Recipe

logger = logging.getLogger(__name__)

PAPER_SETTINGS = {"threshold": 0.65, "merge_layers": 3, "interval": 2}  # T, C - 1, I (Llama2-7B)
_MAX_PASSES = 64  # threshold steps per (C, I) before the sweep moves on


@dataclass(frozen=True)
class _Slot:
    """One layer of the collapsing model: the original index whose place it holds (the prior
    layer of a collapse), its collapsed module (None: the base's own layer `rep`) and `source`,
    a hashable description of what was merged into it (for caching similarities)."""

    rep: int
    module: nn.Module | None = field(default=None, compare=False)
    source: object = None

    @property
    def key(self) -> object:
        return self.rep if self.source is None else self.source


def projection_names(layer: nn.Module) -> list[str]:
    """Names (relative to the layer) of the parameters of its linear projections: q/k/v/o and
    gate/up/down for Llama, found by module type (nn.Linear, transformers' Conv1D), not by name,
    so that norms (and anything else that is not a projection) are left out."""
    names = []
    for module_name, module in layer.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            prefix = f"{module_name}." if module_name else ""
            names += [prefix + p for p, _ in module.named_parameters(recurse=False)]
    if not names:
        raise GenomeError(
            f"LaCo found no linear projection in the decoder layer {type(layer).__name__}; it "
            "merges projection weights only, so this architecture is not supported")
    return sorted(names)


def rdsc(group: list[dict[str, torch.Tensor]], names: list[str]) -> dict[str, torch.Tensor]:
    """The prior layer's tensors with each of `names` set to theta_l + sum_{k=1..m} (theta_{l+k}
    - theta_l), in float32, summed as theta_{l+1} + sum_{k>=2} (theta_{l+k} - theta_l) so that
    m = 1 gives theta_{l+1} exactly. Every other tensor (the norms) stays the prior layer's."""
    prior, rear = group[0], group[1:]
    out = dict(prior)
    for name in names:
        theta = prior[name]
        acc = rear[0][name].float().clone()
        for layer in rear[1:]:
            acc += layer[name].float() - theta.float()
        out[name] = acc.to(theta.dtype)
    return out


def sentence_cosine(hidden: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
    """Per row (sentence), the cosine of its real tokens' final states flattened into one vector
    (LaCo's representation of a sentence); exactly 1.0 where they are identical. (B,) float64."""
    m = mask.unsqueeze(-1)
    a = torch.where(m, hidden, 0.0).double().flatten(1)
    b = torch.where(m, reference, 0.0).double().flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    return torch.where((a == b).all(dim=1), torch.ones_like(cos), cos.clamp(-1.0, 1.0))


class _Collapser:
    """The base's layers, the reference final hidden states, and model builds for slot lists."""

    def __init__(self, calib: Calibration) -> None:
        self.calib = calib
        self.layout = DecoderLayout.of_family(calib.family)
        self.base_layers = list(self.layout.layers(calib.stitcher.build(calib.full_genome())))
        self.projections = projection_names(self.base_layers[0])
        self._similarity: dict[object, float] = {}
        self._collapsed: dict[object, _Slot] = {}

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
        """The rear slots' projections merged into the first slot, which keeps its place and its
        norms (cached: a sweep repeats the same collapses)."""
        source = ("collapse", tuple(s.key for s in group))
        if source not in self._collapsed:
            prior = group[0]
            module = copy.deepcopy(prior.module or self.base_layers[prior.rep])
            module.load_state_dict(rdsc([self.tensors(s) for s in group], self.projections))
            self._collapsed[source] = _Slot(prior.rep, module, source)
        return self._collapsed[source]

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
        """LaCo's Avg_Cos_Sim: the mean over calibration sentences of the cosine similarity of
        the sentence's final-layer representation (normed last hidden states of its tokens,
        flattened) in the collapsed and the original model; identical states give 1.0."""
        key = tuple(s.key for s in slots)
        if key not in self._similarity:
            reference = self.reference  # first: computing it rebuilds the full model
            total, count = 0.0, 0
            for (hidden, mask), (ref, _) in zip(self._final_hidden(self.build(slots)), reference,
                                                strict=True):
                total += float(sentence_cosine(hidden, ref, mask).sum())
                count += hidden.shape[0]
            self._similarity[key] = total / count
        return self._similarity[key]


@dataclass
class _Pass:
    """One run of LaCo's Algorithm 1 at fixed (T, C - 1, I, H)."""

    threshold: float
    merge_layers: int
    interval: int
    slots: list[_Slot]
    removed: int = 0
    trials: list[dict] = field(default_factory=list)

    def summary(self, n_remove: int) -> dict:
        rejected = [t["similarity"] for t in self.trials if not t["accepted"]]
        return {"threshold": self.threshold, "merge_layers": self.merge_layers,
                "interval": self.interval, "removed": self.removed,
                "reached": self.removed >= n_remove,
                "best_rejected": max(rejected) if rejected else None}


def _run_pass(collapser: _Collapser, n_remove: int, threshold: float, merge_layers: int,
              interval: int, lowest: int, bar: tqdm) -> _Pass:
    """Algorithm 1: from l = L - C down to H, collapse layers l..l+m into l; keep the collapse
    if the similarity exceeds T and step I down, else step 1 down. The last collapse merges
    fewer layers when that hits the target exactly."""
    run = _Pass(threshold, merge_layers, interval,
                [_Slot(i) for i in range(collapser.calib.family.n_layers)])
    position = len(run.slots)
    while run.removed < n_remove:
        m = min(merge_layers, n_remove - run.removed)
        position = min(position, len(run.slots) - 1 - m)
        if position < lowest:
            break
        group = run.slots[position: position + m + 1]
        trial = [*run.slots[:position], collapser.collapse(group), *run.slots[position + m + 1:]]
        sim = collapser.similarity(trial)
        accepted = sim > threshold
        run.trials.append({"layers": [s.rep for s in group], "similarity": round(sim, 9),
                           "accepted": accepted})
        logger.debug("laco: collapse %s -> similarity %.6f (%s)", run.trials[-1]["layers"], sim,
                     "kept" if accepted else "rejected")
        bar.update(1)
        if accepted:
            run.slots, run.removed = trial, run.removed + m
            position -= interval
        else:
            position -= 1
    return run


def _sweep_settings(merge_layers: int, interval: int, n_remove: int) -> list[tuple[int, int]]:
    """(C - 1, I) in the order a sweep tries them: the given ones, then I = 1 (more prior layers
    are tried), then larger C (more layers per collapse)."""
    combos = [(merge_layers, interval)]
    if interval > 1:
        combos.append((merge_layers, 1))
    combos += [(m, 1) for m in range(merge_layers + 1, n_remove + 1)]
    return combos


@BASELINES.register("laco")
def laco(calib: Calibration, n_remove: int, *, threshold: float = PAPER_SETTINGS["threshold"],
         merge_layers: int = PAPER_SETTINGS["merge_layers"],
         interval: int = PAPER_SETTINGS["interval"], lowest: int = 1,
         sweep: bool = True) -> BaselineResult:
    """LaCo until `n_remove` layers are gone. `merge_layers` (m, the paper's C - 1) rear layers
    per collapse; after a kept collapse the next prior layer is `interval` lower (I), after a
    rejected one 1 lower; layers below `lowest` (H) never absorb others; a collapse is kept when
    the similarity exceeds `threshold` (T). Defaults are the paper's Llama2-7B settings.

    Where the pass misses the target and `sweep` is on, T is lowered to just below the best
    rejected similarity (the smallest change that keeps one more collapse) and the pass rerun,
    until the target is met or every collapse passes; then I = 1, then larger C are tried the
    same way. Every pass is in `details["sweep"]` and the settings used in `details`. Without
    `sweep`, or when nothing reaches the target, raises ConfigError."""
    if merge_layers < 1 or interval < 1 or lowest < 0:
        raise ConfigError(f"LaCo needs merge_layers >= 1, interval >= 1, lowest >= 0; got "
                          f"{merge_layers}, {interval}, {lowest}")
    collapser = _Collapser(calib)
    bar = tqdm(desc="laco", disable=not calib.progress)
    passes: list[_Pass] = []
    combos = _sweep_settings(merge_layers, interval, n_remove) if sweep else [(merge_layers, interval)]
    try:
        for m, i in combos:
            t = threshold
            for _ in range(_MAX_PASSES if sweep else 1):
                passes.append(_run_pass(collapser, n_remove, t, m, i, lowest, bar))
                best = passes[-1].summary(n_remove)["best_rejected"]
                if passes[-1].removed >= n_remove or best is None or not sweep:
                    break
                t = math.floor(best * 1e6 - 1) / 1e6  # just below: that collapse now passes
            if passes[-1].removed >= n_remove:
                break
    finally:
        bar.close()
        calib.stitcher.build(calib.full_genome())
    final = passes[-1]
    attempts = [p.summary(n_remove) for p in passes]
    if final.removed < n_remove:
        first = passes[0]
        best = attempts[0]["best_rejected"]
        raise ConfigError(
            f"LaCo removed only {first.removed} of {n_remove} layers at threshold {threshold}: no "
            f"further collapse keeps the final representations' cosine similarity above "
            f"{threshold} (best rejected: {best if best is not None else float('nan'):.4f})"
            + (f"; a sweep of {len(passes)} passes over T, I and C reached at most "
               f"{max(p.removed for p in passes)}" if sweep else "")
            + ". Lower the threshold (--laco-threshold) or remove fewer layers."
        )
    if len(passes) > 1:
        logger.warning(
            "laco: T=%s, C=%d, I=%d removes only %d of %d layers; swept %d passes to T=%s, C=%d, "
            "I=%d", threshold, merge_layers + 1, interval, passes[0].removed, n_remove,
            len(passes), final.threshold, final.merge_layers + 1, final.interval)
    kept = {s.rep for s in final.slots}
    genome = calib.base_genome([i for i in range(calib.family.n_layers) if i not in kept])
    collapsed = {s.rep: {k: v.detach().clone() for k, v in s.module.state_dict().items()}
                 for s in final.slots if s.module is not None}
    details = {"threshold": final.threshold, "merge_layers": final.merge_layers,
               "interval": final.interval, "lowest": lowest,
               "requested": {"threshold": threshold, "merge_layers": merge_layers,
                             "interval": interval},
               "swept": len(passes) > 1, "sweep": attempts,
               "merged_tensors": collapser.projections,
               "similarity": "mean over sentences of cos(flattened normed final hidden states)",
               "trials": final.trials}
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
    try:
        with staged_folder(out_dir, overwrite=overwrite, reads=[m.path for m in calib.family.members]) as stage:
            collapsed_model(calib, result).save_pretrained(stage.tmp, safe_serialization=True)
            copy_tokenizer(calib.family.base.path, stage.tmp)
            if recipe is not None:
                (stage.tmp / "laco_removal_recipe.yaml").write_text(recipe.text)
        return stage.out
    finally:
        calib.stitcher.build(calib.full_genome())
