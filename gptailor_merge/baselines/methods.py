"""The removal-set baselines: reverse order, ShortGPT, angular distance, greedy perplexity.

Each measures the base model only (the stitcher's base-only genomes) on calibration text and
returns a base-only genome. ShortGPT: Men et al. 2024 (arXiv 2403.03853); angular distance:
Gromov et al. 2024 (arXiv 2403.17887); greedy perplexity: SLEB / BlockPruner style.
"""

from __future__ import annotations

import logging
import math

import torch
from tqdm.auto import tqdm

from gptailor_merge.baselines.calibration import hidden_state_batches, token_cosine
from gptailor_merge.baselines.core import BASELINES, BaselineResult, Calibration, rounded
from gptailor_merge.core.errors import ConfigError
from gptailor_merge.scoring.perplexity import perplexity

logger = logging.getLogger(__name__)


@BASELINES.register("reverse")
def reverse(calib: Calibration, n_remove: int) -> BaselineResult:
    """Drop the `n_remove` layers just below the final one (L=12, n=3 -> 8, 9, 10)."""
    last = calib.family.n_layers - 1
    removed = list(range(last - n_remove, last))
    return BaselineResult("reverse", calib.base_genome(removed))


def _hidden(calib: Calibration):
    model = calib.stitcher.build(calib.full_genome())
    return hidden_state_batches(model, calib.family, calib.tokenizer, calib.texts,
                                batch_size=calib.batch_size, max_length=calib.max_length)


def block_influence(calib: Calibration) -> list[float]:
    """BI_i = mean over all real (non-padding) calibration tokens, BOS included, of
    1 - cos(input of layer i, output of layer i); token-weighted across texts."""
    n_layers = calib.family.n_layers
    sums = [0.0] * n_layers
    n_tokens = 0
    for batch in _hidden(calib):
        for i in range(n_layers):
            cos = token_cosine(batch.states[i], batch.states[i + 1])  # (B, T)
            sums[i] += float((1.0 - cos.double())[batch.mask].sum())
        n_tokens += int(batch.mask.sum())
    return [s / n_tokens for s in sums]


@BASELINES.register("shortgpt")
def shortgpt(calib: Calibration, n_remove: int) -> BaselineResult:
    """Remove the `n_remove` layers of lowest Block Influence (ties: lower index first)."""
    bi = block_influence(calib)
    order = sorted(range(len(bi)), key=lambda i: (bi[i], i))
    removed = sorted(order[:n_remove])
    return BaselineResult("shortgpt", calib.base_genome(removed),
                          {"block_influence": rounded(bi, 9), "order": order})


def angular_distances(calib: Calibration, n_block: int, tokens: str = "last") -> list[float]:
    """d(l) = arccos(cos(h_l, h_{l+n})) / pi for l = 0..L-n, with h_l the input of layer l
    (h_L the last layer's output, before the final norm). `tokens="last"`: each text's last
    token, averaged over texts (Gromov et al.); `"all"`: averaged over all real tokens."""
    if tokens not in ("last", "all"):
        raise ConfigError(f"angular tokens must be 'last' or 'all', got {tokens!r}")
    n_layers = calib.family.n_layers
    sums = [0.0] * (n_layers - n_block + 1)
    count = 0
    for batch in _hidden(calib):
        rows = torch.arange(batch.mask.shape[0], device=batch.mask.device)
        for start in range(len(sums)):
            cos = token_cosine(batch.states[start], batch.states[start + n_block]).double()
            dist = torch.arccos(cos) / math.pi  # (B, T)
            picked = dist[rows, batch.last] if tokens == "last" else dist[batch.mask]
            sums[start] += float(picked.sum())
        count += int(batch.mask.shape[0] if tokens == "last" else batch.mask.sum())
    return [s / count for s in sums]


@BASELINES.register("angular")
def angular(calib: Calibration, n_remove: int, tokens: str = "last") -> BaselineResult:
    """Remove the contiguous block of `n_remove` layers whose ends are closest in angle."""
    if n_remove == 0:
        return BaselineResult("angular", calib.full_genome(), {"tokens": tokens})
    dist = angular_distances(calib, n_remove, tokens)
    start = min(range(len(dist)), key=lambda s: (dist[s], s))
    removed = list(range(start, start + n_remove))
    return BaselineResult("angular", calib.base_genome(removed),
                          {"tokens": tokens, "block_start": start, "angular_distance": rounded(dist, 9)})


def calibration_nll(calib: Calibration, removed: list[int]) -> float:
    """Token-weighted mean NLL of the base model without `removed`, on the calibration texts."""
    model = calib.build(calib.base_genome(removed))
    return perplexity(model, calib.tokenizer, calib.texts, batch_size=calib.batch_size,
                      max_length=calib.max_length)["nll"]


@BASELINES.register("greedy_ppl")
def greedy_ppl(calib: Calibration, n_remove: int) -> BaselineResult:
    """Remove one layer at a time: each step the one whose removal gives the lowest calibration
    perplexity (ties: lower index). Costs about n_remove * L perplexity passes, no weight copies;
    prefix reuse skips the layers before each trial's first removed one."""
    n_layers = calib.family.n_layers
    removed: list[int] = []
    steps = []
    bar = tqdm(total=n_remove * n_layers, desc="greedy-ppl", disable=not calib.progress)
    for _ in range(n_remove):
        trials = {}
        for i in range(n_layers):
            if i not in removed:
                trials[i] = calibration_nll(calib, sorted([*removed, i]))
                bar.update(1)
        best = min(trials, key=lambda i: (trials[i], i))
        removed.append(best)
        steps.append({"removed": best, "ppl": round(math.exp(min(trials[best], 700)), 6)})
        logger.debug("greedy-ppl step %d: remove %d (nll %.5f)", len(removed), best, trials[best])
    bar.close()
    calib.stitcher.build(calib.full_genome())
    return BaselineResult("greedy_ppl", calib.base_genome(removed), {"steps": steps})
