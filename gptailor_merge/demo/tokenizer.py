"""Train the family's byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast`.

Trained on an equal sample of each domain's train split; encodes `<|bos|> text` by default
(training windows start with BOS too). Saved into every member folder; no model code here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2


def _sample(docs: Iterable[str], n_chars: int) -> list[str]:
    out, total = [], 0
    for doc in docs:
        if total >= n_chars:
            break
        out.append(doc[: n_chars - total])
        total += len(out[-1])
    return out


def train_tokenizer(train_docs: Mapping[str, Iterable[str]], vocab_size: int,
                    chars_per_domain: int) -> PreTrainedTokenizerFast:
    """A BPE tokenizer of `vocab_size` tokens fitted to the first `chars_per_domain` of each domain."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [t for docs in train_docs.values() for t in _sample(docs, chars_per_domain)]
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    logger.info("tokenizer: %d tokens from %d characters", tok.get_vocab_size(),
                sum(map(len, texts)))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        model_max_length=2048, padding_side="right", clean_up_tokenization_spaces=False,
    )
