"""Named size presets of the demo family: model shape, training budget, corpus and task sizes.

`default` is a real 12-layer family that builds in ~6 minutes on 2 CPU cores; `tiny` is a
4-layer toy for unit tests (seconds). Pure data: no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptailor_merge.core.errors import ConfigError
from gptailor_merge.core.registry import did_you_mean


@dataclass(frozen=True)
class DemoPreset:
    name: str
    # model (Llama)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    seq_len: int
    # training
    batch_size: int
    pretrain_steps: int
    finetune_steps: int
    pretrain_lr: float
    finetune_lr: float
    warmup_steps: int
    # data
    max_train_chars: int  # per domain, train split
    tokenizer_train_chars: int  # per domain, sample the tokenizer is trained on
    n_task_examples: int  # per task and split
    n_text_samples: int  # per domain and split
    text_sample_chars: int
    # The search split's sizes where they differ: validation is carved from it (half, by content
    # hash), and the pick on validation needs more examples than the search's top rung reads.
    n_search_task_examples: int | None = None
    n_search_text_samples: int | None = None


PRESETS: dict[str, DemoPreset] = {
    "default": DemoPreset(
        name="default", vocab_size=4096, hidden_size=128, intermediate_size=352, n_layers=12,
        n_heads=4, seq_len=128, batch_size=16, pretrain_steps=330, finetune_steps=110,
        pretrain_lr=2e-3, finetune_lr=1e-3, warmup_steps=20, max_train_chars=2_500_000,
        tokenizer_train_chars=600_000, n_task_examples=256, n_text_samples=128,
        text_sample_chars=360, n_search_task_examples=768, n_search_text_samples=256,
    ),
    "tiny": DemoPreset(
        name="tiny", vocab_size=512, hidden_size=32, intermediate_size=64, n_layers=4,
        n_heads=4, seq_len=128, batch_size=8, pretrain_steps=30, finetune_steps=10,
        pretrain_lr=3e-3, finetune_lr=2e-3, warmup_steps=3, max_train_chars=120_000,
        tokenizer_train_chars=40_000, n_task_examples=16, n_text_samples=8,
        text_sample_chars=160,
    ),
}


def get_preset(name: str) -> DemoPreset:
    """The preset called `name`; a ConfigError with a did-you-mean otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown demo preset {name!r}.{did_you_mean(name, PRESETS)} Known presets: {', '.join(sorted(PRESETS))}."
        ) from None
