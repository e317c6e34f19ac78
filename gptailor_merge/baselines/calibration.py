"""Hidden states of a decoder stack on calibration text, for the similarity-based baselines.

Per right-padded batch: every decoder layer's input plus the last layer's output (L + 1 states,
pre final norm), via forward hooks: transformers 5 ties `hidden_states[-1]` to the normed output."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptailor_merge.core.errors import GenomeError
from gptailor_merge.family.architecture import DecoderLayout
from gptailor_merge.family.family import Family
from gptailor_merge.scoring.batching import length_sorted_batches, model_device, pad_right
from gptailor_merge.scoring.perplexity import encode_text


@dataclass(frozen=True)
class HiddenBatch:
    """`states[i]` is layer i's input (i < L) or the last layer's output (i = L), each (B, T, H)
    float32; `mask` (B, T) marks real tokens; `last` (B,) the index of each row's last token."""

    states: list[torch.Tensor]
    mask: torch.Tensor
    last: torch.Tensor


def encode_all(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    return [encode_text(tokenizer, text, max_length) for text in texts]


def _batches(tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int,
             device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    sequences = encode_all(tokenizer, texts, max_length)
    pad_id = tokenizer.pad_token_id or 0
    for batch in length_sorted_batches(sequences, batch_size):
        yield pad_right([sequences[i] for i in batch], device, pad_id)


def _tensor_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def hidden_state_batches(model: nn.Module, family: Family, tokenizer: Any, texts: Sequence[str], *,
                         batch_size: int, max_length: int) -> Iterator[HiddenBatch]:
    """Run the texts through `model` and yield every layer boundary's hidden states per batch."""
    layout = DecoderLayout.of_family(family)
    layers, stack = list(layout.layers(model)), layout.stack(model)
    captured: list[torch.Tensor] = []

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(_tensor_of(args[0] if args else kwargs["hidden_states"]).float())

    def post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        captured.append(_tensor_of(output).float())

    handles = [layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
    handles += [layer.register_forward_hook(post_hook) for layer in layers]
    try:
        with torch.inference_mode():
            for input_ids, attention_mask in _batches(tokenizer, texts, batch_size, max_length,
                                                      model_device(model)):
                captured.clear()
                stack(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                if len(captured) != len(layers) + 1:
                    raise GenomeError(f"captured {len(captured)} hidden states for {len(layers)} layers")
                mask = attention_mask.bool()
                yield HiddenBatch(list(captured), mask, mask.sum(dim=1) - 1)
    finally:
        for handle in handles:
            handle.remove()


def final_hidden_batches(model: nn.Module, family: Family, tokenizer: Any, texts: Sequence[str], *,
                         batch_size: int, max_length: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normed last hidden state (B, T, H) float32, mask (B, T)) per batch, in a fixed order."""
    stack = DecoderLayout.of_family(family).stack(model)
    with torch.inference_mode():
        for input_ids, attention_mask in _batches(tokenizer, texts, batch_size, max_length,
                                                  model_device(model)):
            out = stack(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            yield out.last_hidden_state.float(), attention_mask.bool()


def token_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine over the last dim; exactly 1.0 where the two vectors are identical (no rounding)."""
    cos = F.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
    return torch.where((a == b).all(dim=-1), torch.ones_like(cos), cos)
