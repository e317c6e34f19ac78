"""Scoring throughput against the machine's own floor: per-choice vs shared-context multiple
choice and perplexity, in tokens per second, beside a bare matmul of the model's shapes.

The floor is what the model's linear layers cost on their own (same dtype, same threads): the
seconds per token of every layer's projections plus, at the share of positions a path computes
logits for, the LM head. A path's efficiency is its tokens per second over that floor.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gptailor_merge.scoring.batching import length_sorted_batches
from gptailor_merge.scoring.evaluate import evaluate_model
from gptailor_merge.scoring.examples import ChoiceExample
from gptailor_merge.scoring.multiple_choice import choices_loglikelihoods, continuation, encode_pair
from gptailor_merge.scoring.shared_context import pack_example, padding_fraction, token_batches


def mc_token_counts(tokenizer: Any, examples: Sequence[ChoiceExample], *, batch_size: int,
                    max_length: int) -> dict[str, dict[str, float]]:
    """Real tokens, padded tokens, padding fraction and the share of positions whose logits are
    computed, for the per-choice and the shared-context path on the same examples."""
    per_choice: list[list[int]] = []
    rows = []
    for i, ex in enumerate(examples):
        pairs = [encode_pair(tokenizer, ex.context, continuation(c)) for c in ex.choices]
        per_choice += [(ctx + cont)[-(max_length + 1):][:-1] for ctx, cont in pairs]
        rows += pack_example(i, pairs[0][0], [cont for _, cont in pairs], max_length)
    old_lengths = [len(s) for s in per_choice]
    old_batches = list(length_sorted_batches(per_choice, batch_size))
    new_lengths = [len(r.tokens) for r in rows]
    new_batches = list(token_batches(new_lengths, batch_size * max_length, batch_size))
    scored = sum(len(cols) for r in rows for _, cols, _ in r.scored)

    def counts(lengths, batches, logit_positions):
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return {"tokens": sum(lengths), "padded_tokens": padded,
                "padding_fraction": padding_fraction(lengths, batches),
                "logit_share": logit_positions / padded, "batches": len(batches)}

    old = counts(old_lengths, old_batches, sum(len(b) * max(old_lengths[i] for i in b) for b in old_batches))
    return {"per_choice": old, "shared": counts(new_lengths, new_batches, scored)}


def _timed(fn, device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def compare_mc(model: nn.Module, tokenizer: Any, examples: Sequence[ChoiceExample], *,
               batch_size: int, max_length: int) -> dict[str, Any]:
    """Both paths on the same examples, back to back: seconds, log-likelihood agreement, and
    whether every example's argmax (acc and acc_norm) is the same."""
    device = next(model.parameters()).device
    kw = {"batch_size": batch_size, "max_length": max_length}
    old_s, old = _timed(lambda: choices_loglikelihoods(model, tokenizer, examples, shared_context=False, **kw),
                        device)
    new_s, new = _timed(lambda: choices_loglikelihoods(model, tokenizer, examples, shared_context=True, **kw),
                        device)
    flips = start = 0
    for ex in examples:
        a, b = old[start:start + len(ex.choices)], new[start:start + len(ex.choices)]
        start += len(ex.choices)
        norm = [len(c) for c in ex.choices]
        flips += int(_argmax(a) != _argmax(b))
        flips += int(_argmax([v / n for v, n in zip(a, norm)]) != _argmax([v / n for v, n in zip(b, norm)]))
    return {"examples": len(examples), "per_choice_s": old_s, "shared_s": new_s,
            "speedup": old_s / new_s, "max_abs_loglik_diff": max(abs(x - y) for x, y in zip(old, new)),
            "argmax_differences": flips}


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def matmul_floor(config: Any, *, dtype: torch.dtype, device: torch.device, n_tokens: int = 2048,
                 repeats: int = 3) -> dict[str, float]:
    """Seconds per token of the model's linear layers alone (`body_s`: every decoder layer's
    attention projections and MLP; `head_s`: the LM head), timed as bare matmuls."""
    hidden, inter = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = getattr(config, "num_key_value_heads", heads) or heads
    layer = [(hidden, heads * head_dim), (hidden, kv * head_dim), (hidden, kv * head_dim),
             (heads * head_dim, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]
    gen = torch.Generator().manual_seed(0)

    def per_token(shapes, count):
        mats = [(torch.randn(n_tokens, i, generator=gen).to(device, dtype),
                 torch.randn(i, o, generator=gen).to(device, dtype)) for i, o in shapes]
        with torch.inference_mode():
            for x, w in mats:  # warm up
                x @ w
            best = float("inf")
            for _ in range(repeats):
                seconds, _ = _timed(lambda: [x @ w for x, w in mats], device)
                best = min(best, seconds)
        return best * count / n_tokens

    body = per_token(layer, config.num_hidden_layers)
    head = per_token([(hidden, config.vocab_size)], 1)
    flops = 2 * n_tokens * (sum(i * o for i, o in layer) * config.num_hidden_layers + hidden * config.vocab_size)
    return {"body_s": body, "head_s": head, "gflops": flops / n_tokens / (body + head) / 1e9}


def floor_rate(floor: dict[str, float], logit_share: float) -> float:
    """Tokens per second of the bare matmuls when logits are computed at `logit_share` of them."""
    return 1.0 / (floor["body_s"] + logit_share * floor["head_s"])


def throughput(model: nn.Module, tokenizer: Any, tasks: Sequence[Any], *, split: str = "heldout",
               batch_size: int = 16, max_length: int = 256) -> dict[str, Any]:
    """The throughput section: per multiple-choice task both paths, their token rates and their
    ratios to the floor; perplexity's rate (one path); one held-out row's scoring time before and
    after (the sum of its tasks' timings)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    floor = matmul_floor(model.config, dtype=dtype, device=device)
    out: dict[str, Any] = {"floor": {**floor, "tokens_per_s_full_logits": floor_rate(floor, 1.0)},
                           "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."),
                           "tasks": {}}
    for task in tasks:
        examples = task.examples(split)
        if task.kind == "multiple_choice":
            counts = mc_token_counts(tokenizer, examples, batch_size=batch_size, max_length=max_length)
            timing = compare_mc(model, tokenizer, examples, batch_size=batch_size, max_length=max_length)
            old, new = counts["per_choice"], counts["shared"]
            row = {**timing, "counts": counts,
                   "per_choice_tokens_per_s": old["tokens"] / timing["per_choice_s"],
                   "shared_tokens_per_s": new["tokens"] / timing["shared_s"],
                   # the gain: the old path's tokens over the new path's seconds
                   "shared_effective_tokens_per_s": old["tokens"] / timing["shared_s"]}
            row["per_choice_floor_ratio"] = floor_rate(floor, old["logit_share"]) / row["per_choice_tokens_per_s"]
            row["shared_floor_ratio"] = floor_rate(floor, new["logit_share"]) / row["shared_tokens_per_s"]
        else:
            seconds, score = _timed(lambda task=task: evaluate_model(model, tokenizer, [task], split=split,
                                                           batch_size=batch_size, max_length=max_length),
                                    device)
            tokens = score.tasks[task.name].metrics["tokens"]
            row = {"examples": len(examples), "seconds": seconds, "tokens_per_s": tokens / seconds,
                   "floor_ratio": floor_rate(floor, 1.0) / (tokens / seconds)}
        out["tasks"][task.name] = row
    # one held-out row: every task once per path, from the task timings above
    rows = out["tasks"].values()
    out["heldout_row_s"] = {"per_choice": sum(r.get("per_choice_s", r.get("seconds", 0.0)) for r in rows),
                            "shared": sum(r.get("shared_s", r.get("seconds", 0.0)) for r in rows)}
    out["heldout_row_speedup"] = out["heldout_row_s"]["per_choice"] / out["heldout_row_s"]["shared"]
    return out


def format_throughput(section: dict[str, Any]) -> str:
    """The section as a markdown table plus the floor and the held-out row line."""
    floor = section["floor"]
    lines = [f"floor: bare matmuls of the model's shapes ({section['dtype']}, {section['threads']} threads): "
             f"{floor['tokens_per_s_full_logits']:.0f} tokens/s with logits everywhere "
             f"({floor['gflops']:.1f} GFLOP/s)",
             "",
             "| task | path | s | tokens/s | effective tokens/s | floor / rate | padding | speedup | max dll | flips |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in section["tasks"].items():
        if "per_choice_s" in row:
            c = row["counts"]
            lines.append(f"| {name} | per-choice | {row['per_choice_s']:.1f} | {row['per_choice_tokens_per_s']:.0f} "
                         f"| {row['per_choice_tokens_per_s']:.0f} | {row['per_choice_floor_ratio']:.2f}x "
                         f"| {c['per_choice']['padding_fraction']:.3f} | | | |")
            lines.append(f"| {name} | shared | {row['shared_s']:.1f} | {row['shared_tokens_per_s']:.0f} "
                         f"| {row['shared_effective_tokens_per_s']:.0f} | {row['shared_floor_ratio']:.2f}x "
                         f"| {c['shared']['padding_fraction']:.3f} | {row['speedup']:.2f}x "
                         f"| {row['max_abs_loglik_diff']:.1e} | {row['argmax_differences']} |")
        else:
            lines.append(f"| {name} | perplexity | {row['seconds']:.1f} | {row['tokens_per_s']:.0f} | "
                         f"{row['tokens_per_s']:.0f} | {row['floor_ratio']:.2f}x | | | | |")
    held = section["heldout_row_s"]
    lines += ["", f"held-out row (every task): per-choice {held['per_choice']:.1f}s, shared {held['shared']:.1f}s, "
                  f"{section['heldout_row_speedup']:.2f}x"]
    return "\n".join(lines)
