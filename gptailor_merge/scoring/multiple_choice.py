"""Multiple choice by log-likelihood, as lm-evaluation-harness scores it.

Each choice is a continuation `" " + choice` of the context (lm-eval's default target delimiter;
a choice that already starts with whitespace, like `" 42"` or `"\n    return x"`, gets none);
its log-likelihood is the sum of the continuation tokens' log-probs (`_encode_pair`: trailing
context whitespace moves onto the continuation). acc = argmax log-likelihood is the answer,
acc_norm = argmax of log-likelihood / len(choice in characters). Mirrors `lm_eval/api/model.py`.
`choice_nll` (ours) is the cross-entropy of the gold choice under a softmax over the choices'
log-likelihoods: a continuous companion of acc whose differences between two models on the same
examples are far less noisy than accuracy's 0/1 flips (what a search compares).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gptailor_merge.core.config import DEFAULT_MAX_LENGTH
from gptailor_merge.core.errors import ConfigError, TaskError
from gptailor_merge.scoring.batching import map_rows, model_device
from gptailor_merge.scoring.examples import ChoiceExample
from gptailor_merge.scoring.shared_context import choice_loglikelihoods, supports_shared_context

logger = logging.getLogger(__name__)

TARGET_DELIMITER = " "


@functools.lru_cache(maxsize=1 << 16)
def cached_encode(tokenizer: Any, text: str, add_special_tokens: bool) -> tuple[int, ...]:
    """Tokenization memo: a search scores the same examples hundreds of times."""
    return tuple(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def _encode(tokenizer: Any, text: str) -> list[int]:
    """lm-eval's `tok_encode`: the tokenizer's own special tokens, unless the text starts with BOS."""
    bos = tokenizer.bos_token
    add_special = not (bos and text.startswith(bos))
    return list(cached_encode(tokenizer, text, add_special))


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-eval's `loglikelihood` / `_encode_pair`."""
    if context == "":
        continuation_ids = list(cached_encode(tokenizer, continuation, False))
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise TaskError("an empty context needs a BOS or EOS token to condition on; this "
                            "tokenizer has neither. Give the examples a context.")
        if continuation_ids and prefix == continuation_ids[0]:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


def _check_continuations(context: str, continuations: Sequence[str],
                         encoded: Sequence[Sequence[int]], max_length: int) -> None:
    for text, continuation_ids in zip(continuations, encoded, strict=True):
        if not continuation_ids:
            raise TaskError(f"continuation {text!r} of context {context[-40:]!r} encodes "
                            f"to no token; it cannot be scored.")
        if len(continuation_ids) > max_length:
            raise ConfigError(f"a continuation has {len(continuation_ids)} tokens, more than "
                              f"max_length={max_length}; raise max_length.")


def loglikelihoods(model: nn.Module, tokenizer: Any, requests: Sequence[tuple[str, str]], *,
                   batch_size: int = 16, max_length: int = DEFAULT_MAX_LENGTH, progress: bool = False,
                   boundaries: Sequence[int] = ()) -> list[float]:
    """log P(continuation | context) for each (context, continuation); long inputs lose tokens on
    the left, as in lm-eval. `boundaries` (request counts) only change the batching."""
    pairs = [encode_pair(tokenizer, context, continuation) for context, continuation in requests]
    for (context, continuation), (_, continuation_ids) in zip(requests, pairs, strict=True):
        _check_continuations(context, [continuation], [continuation_ids], max_length)
    # the model sees context + continuation minus its last token, cut to max_length from the left
    inputs = [(ctx + cont)[-(max_length + 1) :][:-1] for ctx, cont in pairs]
    device = model_device(model)

    def row_loglikelihood(logits: torch.Tensor, length: int, index: int) -> torch.Tensor:
        continuation_ids = pairs[index][1]
        start = length - len(continuation_ids)
        log_probs = torch.log_softmax(logits[start:length].float(), dim=-1)  # (C, V)
        targets = torch.tensor(continuation_ids, dtype=torch.long, device=device)
        return log_probs.gather(-1, targets[:, None]).sum().double()

    values = map_rows(model, inputs, row_loglikelihood, batch_size=batch_size,
                      pad_id=tokenizer.pad_token_id or 0, progress=progress, desc="loglikelihood",
                      boundaries=boundaries)
    return torch.stack(values).tolist() if values else []


def continuation(choice: str) -> str:
    """The text scored after the context: the choice behind lm-eval's delimiter, unless the
    choice brings its own leading whitespace (else JSONL files written with `" 42"` score `"  42"`)."""
    return choice if choice[:1].isspace() else TARGET_DELIMITER + choice


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])  # first maximum, as numpy


def multiple_choice(model: nn.Module, tokenizer: Any, examples: Sequence[ChoiceExample], *,
                    batch_size: int = 16, max_length: int = DEFAULT_MAX_LENGTH, progress: bool = False,
                    boundaries: Sequence[int] = ()) -> dict[str, float]:
    """`{"acc", "acc_norm", "n"}` over `examples`; `boundaries` (example counts) only change the
    batching: each becomes the request count of its examples' choices."""
    return multiple_choice_details(model, tokenizer, examples, batch_size=batch_size,
                                   max_length=max_length, progress=progress,
                                   boundaries=boundaries)[0]


def multiple_choice_details(model: nn.Module, tokenizer: Any, examples: Sequence[ChoiceExample],
                            *, batch_size: int = 16, max_length: int = DEFAULT_MAX_LENGTH,
                            progress: bool = False, boundaries: Sequence[int] = (),
                            shared_context: bool | None = None
                            ) -> tuple[dict[str, float], dict[str, tuple[float, ...]]]:
    """`multiple_choice`'s metrics plus, per example, `acc` and `acc_norm` (1.0 right, 0.0 wrong)
    and `choice_nll` (`gold_choice_nll`): paired intervals resample these. `shared_context` as in
    `choices_loglikelihoods`."""
    if not examples:
        raise TaskError("no multiple-choice examples to score.")
    lls = choices_loglikelihoods(model, tokenizer, examples, batch_size=batch_size,
                                 max_length=max_length, progress=progress, boundaries=boundaries,
                                 shared_context=shared_context)
    right: list[float] = []
    right_norm: list[float] = []
    gold_nll: list[float] = []
    start = 0
    for ex in examples:
        scores = lls[start : start + len(ex.choices)]
        start += len(ex.choices)
        right.append(float(_argmax(scores) == ex.answer))
        normed = [score / len(choice) for score, choice in zip(scores, ex.choices, strict=True)]
        right_norm.append(float(_argmax(normed) == ex.answer))
        gold_nll.append(gold_choice_nll(scores, ex.answer))
    n = len(examples)
    logger.debug("multiple choice over %d examples: acc %d/%d", n, sum(right), n)
    metrics = {"acc": sum(right) / n, "acc_norm": sum(right_norm) / n,
               "choice_nll": sum(gold_nll) / n, "n": n}
    return metrics, {"acc": tuple(right), "acc_norm": tuple(right_norm),
                     "choice_nll": tuple(gold_nll)}


def choices_loglikelihoods(model: nn.Module, tokenizer: Any, examples: Sequence[ChoiceExample], *,
                           batch_size: int = 16, max_length: int = DEFAULT_MAX_LENGTH,
                           progress: bool = False, boundaries: Sequence[int] = (),
                           shared_context: bool | None = None) -> list[float]:
    """Every choice's log-likelihood, example after example. `shared_context` None packs each
    example's choices in one row where the model supports it (`scoring.shared_context`), True
    demands it, False scores each choice as its own sequence (lm-eval's way; the reference)."""
    if shared_context is None:
        shared_context = supports_shared_context(model)
    elif shared_context and not supports_shared_context(model):
        raise ConfigError("shared-context scoring needs a llama, mistral or qwen2/3 model with sdpa "
                          "or eager attention; pass shared_context=None to fall back.")
    if not shared_context:
        requests = [(ex.context, continuation(choice)) for ex in examples for choice in ex.choices]
        starts = [0]
        for ex in examples:
            starts.append(starts[-1] + len(ex.choices))
        return loglikelihoods(model, tokenizer, requests, batch_size=batch_size,
                              max_length=max_length, progress=progress,
                              boundaries=[starts[b] for b in boundaries if 0 < b < len(examples)])
    contexts, continuations = [], []
    for ex in examples:
        pairs = [encode_pair(tokenizer, ex.context, continuation(choice)) for choice in ex.choices]
        _check_continuations(ex.context, [continuation(c) for c in ex.choices],
                             [cont for _, cont in pairs], max_length)
        contexts.append(pairs[0][0])  # the context's own encoding: the same for every choice
        continuations.append([cont for _, cont in pairs])
    per_example = choice_loglikelihoods(model, contexts, continuations, max_length=max_length,
                                        max_tokens=batch_size * max_length, max_rows=batch_size,
                                        pad_id=tokenizer.pad_token_id or 0, progress=progress,
                                        boundaries=boundaries)
    return [value for values in per_example for value in values]


def gold_choice_nll(loglikelihoods: Sequence[float], answer: int) -> float:
    """-log softmax(loglikelihoods)[answer]: how surely the model prefers the gold choice
    (log(k) when it cannot tell k choices apart, 0 when it is certain)."""
    top = max(loglikelihoods)
    log_z = top + math.log(sum(math.exp(v - top) for v in loglikelihoods))
    return log_z - loglikelihoods[answer]
