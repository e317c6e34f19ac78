"""Batched forward passes over token sequences, as lm-evaluation-harness does them.

Sequences are sorted longest first (lm-eval's `_collate`: an OOM shows at once, batches pad little),
right-padded with an attention mask, run under `torch.inference_mode()` on the model's device,
and each result goes back to its original index. Optional boundaries restart the sorting, so the
batches of a budget's first b sequences open every larger budget's batches (prefix reuse then
spans fidelity rungs). Knows nothing of tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from gptailor_merge.core.errors import ConfigError

R = TypeVar("R")
# (logits of one row, its unpadded length, the row's index in the input) -> result
RowFn = Callable[[torch.Tensor, int, int], R]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def length_sorted_batches(sequences: Sequence[Sequence[int]], batch_size: int,
                          boundaries: Sequence[int] = ()) -> Iterator[list[int]]:
    """Indices in batches of `batch_size`, longest sequence first (ties by tokens, as lm-eval),
    sorted and batched separately within each segment that `boundaries` (sequence counts) cut."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    cuts = sorted({int(b) for b in boundaries if 0 < b < len(sequences)})
    for lo, hi in zip([0, *cuts], [*cuts, len(sequences)], strict=True):
        order = sorted(range(lo, hi), key=lambda i: (-len(sequences[i]), tuple(sequences[i])))
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


def pad_right(sequences: Sequence[Sequence[int]], device: torch.device, pad_id: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) with T the longest sequence of the batch."""
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids.to(device), attention_mask.to(device)


def forward_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
                   ) -> torch.Tensor:
    """(B, T, V) logits; a `transformers` model is called without a KV cache."""
    kwargs = {"use_cache": False} if isinstance(model, PreTrainedModel) else {}
    return model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits


def map_rows(model: nn.Module, sequences: Sequence[Sequence[int]], row_fn: RowFn[R], *,
             batch_size: int, pad_id: int = 0, progress: bool = False, desc: str = "",
             boundaries: Sequence[int] = ()) -> list[R]:
    """Runs every sequence through the model in length-sorted batches (per segment between
    `boundaries`) and applies `row_fn` to each row's logits; returns results in the original order."""
    device = model_device(model)
    results: list[R | None] = [None] * len(sequences)
    batches = list(length_sorted_batches(sequences, batch_size, boundaries))
    with torch.inference_mode():
        for batch in tqdm(batches, desc=desc, disable=not progress):
            input_ids, attention_mask = pad_right([sequences[i] for i in batch], device, pad_id)
            logits = forward_logits(model, input_ids, attention_mask)  # (B, T, V)
            for row, index in enumerate(batch):
                results[index] = row_fn(logits[row], len(sequences[index]), index)
    return results  # type: ignore[return-value]
