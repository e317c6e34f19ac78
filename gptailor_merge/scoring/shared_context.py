"""Shared-context multiple choice: every choice of an example in one packed row, the context once.

A row is `context + choice_1[:-1] + choice_2[:-1] + ...` with a 4D attention mask (each choice sees
the context and itself, causally) and per-choice `position_ids` that restart after the context, so
each choice's logits are those of its own `context + choice` sequence (lm-eval's request) up to
float rounding. Logits are computed only at the positions a choice is scored on, from the final
hidden states (`lm_head` of the gathered rows). Choices whose left truncation (`max_length`) cuts a
different context get rows of their own. Batches are packed by tokens, not by example count.
Architectures outside `family.architecture.LAYERWISE_MODEL_TYPES`, or attention that cannot take
a custom mask, keep the per-choice path (`multiple_choice.loglikelihoods`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from gptailor_merge.core.errors import ConfigError
from gptailor_merge.family.architecture import LAYERWISE_MODEL_TYPES
from gptailor_merge.scoring.batching import model_device

logger = logging.getLogger(__name__)

MASKABLE_ATTENTION = ("sdpa", "eager")
"""Attention implementations that take a custom 4D mask (bool for sdpa, additive for eager)."""

_WARNED: set[str] = set()


@dataclass(frozen=True)
class PackedRow:
    """One row: tokens, their positions and segments (0 context, j + 1 choice j), and per scored
    choice `(choice index, row indices whose logits predict it, its target tokens)`."""

    example: int
    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    segments: tuple[int, ...]
    scored: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]


def attention_implementation(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def supports_shared_context(model: nn.Module) -> bool:
    """True where the packed rows give each choice its own sequence's logits; says once why not."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    implementation = attention_implementation(model)
    head = getattr(model, "lm_head", None)
    ok = (model_type in LAYERWISE_MODEL_TYPES and implementation in MASKABLE_ATTENTION
          and isinstance(head, nn.Module)
          and (hasattr(model, "final_hidden_states") or hasattr(model, "get_decoder")))
    if not ok:
        reason = f"{model_type or type(model).__name__!s}/{implementation}"
        if reason not in _WARNED:
            _WARNED.add(reason)
            logger.info("shared-context multiple choice supports %s with %s attention, not %s: "
                        "scoring each choice as its own sequence", ", ".join(LAYERWISE_MODEL_TYPES),
                        " or ".join(MASKABLE_ATTENTION), reason)
    return ok


def pack_example(example: int, context: Sequence[int], continuations: Sequence[Sequence[int]],
                 max_length: int) -> list[PackedRow]:
    """The rows of one example: choices grouped by the context window left truncation leaves them
    (lm-eval's input is `(context + continuation)[-(max_length + 1):][:-1]`)."""
    groups: dict[int, list[int]] = {}
    for j, cont in enumerate(continuations):
        groups.setdefault(max(0, len(context) + len(cont) - (max_length + 1)), []).append(j)
    rows = []
    for start, members in groups.items():
        tokens = list(context[start:])
        n_context = len(tokens)
        positions = list(range(n_context))
        segments = [0] * n_context
        scored = []
        for j in members:
            cont = list(continuations[j])
            offset = len(tokens)
            tokens += cont[:-1]
            positions += range(n_context, n_context + len(cont) - 1)
            segments += [j + 1] * (len(cont) - 1)
            scored.append((j, (n_context - 1, *range(offset, offset + len(cont) - 1)), tuple(cont)))
        rows.append(PackedRow(example, tuple(tokens), tuple(positions), tuple(segments),
                              tuple(scored)))
    return rows


def token_batches(lengths: Sequence[int], max_tokens: int, max_rows: int,
                  boundaries: Sequence[int] = ()) -> Iterator[list[int]]:
    """Row indices in batches whose padded size `rows * longest` stays within `max_tokens` (at most
    `max_rows` rows), longest first, sorted and batched separately between `boundaries` (row counts)."""
    if max_tokens < 1 or max_rows < 1:
        raise ConfigError(f"token batches need max_tokens and max_rows >= 1, got {max_tokens}, {max_rows}.")
    cuts = sorted({int(b) for b in boundaries if 0 < b < len(lengths)})
    for lo, hi in zip([0, *cuts], [*cuts, len(lengths)], strict=True):
        order = sorted(range(lo, hi), key=lambda i: (-lengths[i], i))
        batch: list[int] = []
        for index in order:
            if batch and (len(batch) + 1 > max_rows or (len(batch) + 1) * lengths[batch[0]] > max_tokens):
                yield batch
                batch = []
            batch.append(index)
        if batch:
            yield batch


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the padded batch tokens that are padding."""
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1.0 - sum(lengths) / padded if padded else 0.0


def _batch_tensors(rows: Sequence[PackedRow], device: torch.device, pad_id: int, mask_dtype: torch.dtype | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, 4D mask, position_ids); padding has segment -1 and position 0, so it attends to
    itself and the first context token (finite values) and no real token attends to it."""
    width = max(len(row.tokens) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row.tokens)
        input_ids[r, :n] = torch.tensor(row.tokens, dtype=torch.long)
        positions[r, :n] = torch.tensor(row.positions, dtype=torch.long)
        segments[r, :n] = torch.tensor(row.segments, dtype=torch.long)
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    allowed = ((seg_k == 0) | (seg_k == seg_q)) & (positions[:, None, :] <= positions[:, :, None])
    mask = allowed[:, None]
    if mask_dtype is not None:  # eager attention adds its mask to the scores
        mask = torch.zeros(mask.shape, dtype=mask_dtype).masked_fill(~mask, torch.finfo(mask_dtype).min)
    return input_ids.to(device), mask.to(device), positions.to(device)


def final_hidden_states(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
                        position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T, H) hidden states after the final norm: what `lm_head` reads."""
    own = getattr(model, "final_hidden_states", None)
    if own is not None:  # a prefix-cached stitched model
        return own(input_ids, mask, position_ids)
    out = model.get_decoder()(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                              use_cache=False)
    return out.last_hidden_state


def choice_loglikelihoods(model: nn.Module, context_ids: Sequence[Sequence[int]],
                          continuation_ids: Sequence[Sequence[Sequence[int]]], *, max_length: int,
                          max_tokens: int, max_rows: int, pad_id: int = 0, progress: bool = False,
                          boundaries: Sequence[int] = ()) -> list[list[float]]:
    """Per example, each choice's log P(continuation | context) from packed rows; `boundaries`
    (example counts) only change the batching."""
    rows: list[PackedRow] = []
    row_starts = [0]
    for i, (context, continuations) in enumerate(zip(context_ids, continuation_ids, strict=True)):
        rows += pack_example(i, context, continuations, max_length)
        row_starts.append(len(rows))
    lengths = [len(row.tokens) for row in rows]
    row_cuts = [row_starts[b] for b in boundaries if 0 < b < len(context_ids)]
    batches = list(token_batches(lengths, max_tokens, max_rows, row_cuts))
    device = model_device(model)
    mask_dtype = None if attention_implementation(model) == "sdpa" else next(model.parameters()).dtype
    head = model.lm_head
    results: list[list[float | None]] = [[None] * len(c) for c in continuation_ids]
    with torch.inference_mode():
        for batch in tqdm(batches, desc="choices", disable=not progress):
            batch_rows = [rows[i] for i in batch]
            input_ids, mask, position_ids = _batch_tensors(batch_rows, device, pad_id, mask_dtype)
            hidden = final_hidden_states(model, input_ids, mask, position_ids)
            row_index, col_index, targets, spans = [], [], [], []
            for r, row in enumerate(batch_rows):
                for j, cols, target in row.scored:
                    spans.append((row.example, j, len(row_index), len(cols)))
                    row_index += [r] * len(cols)
                    col_index += cols
                    targets += target
            logits = head(hidden[torch.tensor(row_index, device=device),
                                 torch.tensor(col_index, device=device)])  # (N, V)
            token_lp = torch.log_softmax(logits.float(), dim=-1).gather(
                -1, torch.tensor(targets, dtype=torch.long, device=device)[:, None])[:, 0]
            for example, j, start, n in spans:
                results[example][j] = float(token_lp[start : start + n].sum().double())
    return results  # type: ignore[return-value]
