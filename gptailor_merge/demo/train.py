"""Pre-train the demo base and fine-tune its members: a small Llama, AdamW, cosine schedule.

In: token streams per domain and a preset. Out: trained `LlamaForCausalLM` objects (saving is the
caller's job). Also the token-weighted perplexity used for the specialisation table. Mirrors the
nanoGPT loop: random windows of a packed stream, each window starting with BOS.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from gptailor_merge.demo.presets import DemoPreset

StepCallback = Callable[[int, float], None]  # (step, loss) after each optimiser step


def llama_config(preset: DemoPreset, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.n_layers,
        num_attention_heads=preset.n_heads,
        num_key_value_heads=preset.n_heads,
        max_position_embeddings=4 * preset.seq_len,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def token_stream(tokenizer: PreTrainedTokenizerFast, docs: Sequence[str]) -> torch.Tensor:
    """All documents encoded without BOS and joined by EOS into one 1-D int64 tensor."""
    encodings = tokenizer.backend_tokenizer.encode_batch(list(docs), add_special_tokens=False)
    eos = tokenizer.eos_token_id
    ids = [i for enc in encodings for i in (*enc.ids, eos)]
    return torch.tensor(ids, dtype=torch.long)


def _windows(stream: torch.Tensor, n: int, seq_len: int, bos_id: int,
             generator: torch.Generator) -> torch.Tensor:
    """`n` rows of `[BOS] + stream[o : o + seq_len - 1]` at random offsets o."""
    span = seq_len - 1
    offsets = torch.randint(0, len(stream) - span, (n,), generator=generator)
    rows = torch.stack([stream[o: o + span] for o in offsets.tolist()])  # (n, span)
    return torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), rows], dim=1)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(model: LlamaForCausalLM, streams: Mapping[str, torch.Tensor], *, steps: int, lr: float,
          preset: DemoPreset, bos_id: int, seed: int, on_step: StepCallback | None = None
          ) -> LlamaForCausalLM:
    """Train in place on an equal mixture of `streams` (rows cycle through the domains)."""
    generator = torch.Generator().manual_seed(seed)
    names = sorted(streams)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, preset.warmup_steps, steps))
    model.train()
    for step in range(steps):
        rows = [
            _windows(streams[names[(step * preset.batch_size + i) % len(names)]], 1,
                     preset.seq_len, bos_id, generator)
            for i in range(preset.batch_size)
        ]
        batch = torch.cat(rows)  # (batch_size, seq_len)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step, loss.item())
    model.eval()
    return model


def pretrain_base(preset: DemoPreset, tokenizer: PreTrainedTokenizerFast,
                  streams: Mapping[str, torch.Tensor], seed: int,
                  on_step: StepCallback | None = None) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(preset, tokenizer))
    return train(model, streams, steps=preset.pretrain_steps, lr=preset.pretrain_lr,
                 preset=preset, bos_id=tokenizer.bos_token_id, seed=seed, on_step=on_step)


def finetune(base: LlamaForCausalLM, stream: torch.Tensor, domain: str, preset: DemoPreset,
             bos_id: int, seed: int, on_step: StepCallback | None = None) -> LlamaForCausalLM:
    """A copy of `base` trained further on one domain's stream only."""
    model = copy.deepcopy(base)
    return train(model, {domain: stream}, steps=preset.finetune_steps, lr=preset.finetune_lr,
                 preset=preset, bos_id=bos_id, seed=seed, on_step=on_step)


@torch.no_grad()
def perplexity(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str],
               batch_size: int = 32) -> float:
    """exp of the token-weighted mean next-token NLL over `texts` (each encoded with BOS)."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start: start + batch_size]), return_tensors="pt",
                        padding=True)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        targets = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, reduction="none")  # (B, T-1)
        total_nll += nll[mask].sum().item()
        total_tokens += int(mask.sum())
    return math.exp(total_nll / max(1, total_tokens))
