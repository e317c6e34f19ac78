"""Perplexity: token-weighted mean negative log-likelihood over text samples.

Each sample is tokenized, the tokenizer's BOS (if any) prepended, truncated to `max_length`, and
every token after the first is predicted; NLL = total NLL / total predicted tokens, ppl = exp(NLL).
Takes a model and texts, returns numbers; knows nothing of tasks or recipes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptailor_merge.core.config import DEFAULT_MAX_LENGTH
from gptailor_merge.core.errors import ConfigError, TaskError
from gptailor_merge.scoring.batching import map_rows, model_device
from gptailor_merge.scoring.multiple_choice import cached_encode

logger = logging.getLogger(__name__)


def encode_text(tokenizer: Any, text: str, max_length: int) -> list[int]:
    """BOS (when the tokenizer has one) + the text's tokens, at most `max_length` in all."""
    ids = list(cached_encode(tokenizer, text, False))
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    return ids[:max_length]


def perplexity(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 16,
               max_length: int = DEFAULT_MAX_LENGTH, progress: bool = False, boundaries: Sequence[int] = ()
               ) -> dict[str, float]:
    """`{"nll", "ppl", "n", "tokens"}` over `texts`; `tokens` counts the predicted tokens.
    `boundaries` (text counts) only change how texts are batched (see `scoring.batching`)."""
    return perplexity_details(model, tokenizer, texts, batch_size=batch_size,
                              max_length=max_length, progress=progress, boundaries=boundaries)[0]


def perplexity_details(model: nn.Module, tokenizer: Any, texts: Sequence[str], *,
                       batch_size: int = 16, max_length: int = DEFAULT_MAX_LENGTH, progress: bool = False,
                       boundaries: Sequence[int] = ()
                       ) -> tuple[dict[str, float], dict[str, tuple[float, ...]]]:
    """`perplexity`'s metrics plus, per text, `nll_sum` and `tokens`: paired intervals resample
    texts and recompute the token-weighted NLL from these."""
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 to predict a token, got {max_length}.")
    sequences = [encode_text(tokenizer, text, max_length) for text in texts]
    device = model_device(model)

    def row_nll(logits: torch.Tensor, length: int, index: int) -> torch.Tensor:
        targets = torch.tensor(sequences[index][1:length], dtype=torch.long, device=device)
        # logits (T, V): position t predicts token t + 1; drop the last and the padding
        return F.cross_entropy(logits[: length - 1].float(), targets, reduction="sum").double()

    nlls = map_rows(model, sequences, row_nll, batch_size=batch_size,
                    pad_id=tokenizer.pad_token_id or 0, progress=progress, desc="perplexity",
                    boundaries=boundaries)
    counts = [max(len(seq) - 1, 0) for seq in sequences]
    tokens = sum(counts)
    if tokens == 0:
        raise TaskError(f"no token to predict in {len(texts)} text samples; they tokenize to at "
                        f"most one token each (no BOS in this tokenizer?).")
    stacked = torch.stack(nlls)
    nll = float(stacked.sum().item()) / tokens
    logger.debug("perplexity over %d samples, %d tokens: nll %.4f", len(texts), tokens, nll)
    metrics = {"nll": nll, "ppl": math.exp(nll) if nll < 700 else math.inf, "n": len(texts),
               "tokens": tokens}
    return metrics, {"nll_sum": tuple(stacked.tolist()), "tokens": tuple(float(c) for c in counts)}
