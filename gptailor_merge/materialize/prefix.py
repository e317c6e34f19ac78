"""Prefix reuse: candidates that share their first j layers produce the same hidden states after j.

`PrefixCache` keeps those hidden states (LRU, bounded in bytes), keyed by the layer-spec prefix and
the exact input batch; `PrefixReuse.wrap(model, genome)` returns a model-like module that runs
the model's forward layer by layer (`architecture.LayerwiseForward`), starting after the deepest
cached prefix. Architectures it does not reproduce get the plain model.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from gptailor_merge.core.config import DEFAULT_PREFIX_CACHE_BYTES
from gptailor_merge.core.errors import ConfigError
from gptailor_merge.core.genome import Genome, LayerKey, layer_keys
from gptailor_merge.family.architecture import LAYERWISE_MODEL_TYPES, LayerwiseForward

__all__ = ["DEFAULT_PREFIX_CACHE_BYTES", "LayerKey", "PrefixCache", "PrefixCachedLM", "PrefixReuse",
           "PrefixStats", "batch_key", "layer_keys"]

logger = logging.getLogger(__name__)

"""Prefix-cache bound (1 GiB) of the search's and the baselines' evaluators unless they are given one."""

SUPPORTED_MODEL_TYPES = LAYERWISE_MODEL_TYPES


def batch_key(*tensors: torch.Tensor | None) -> bytes:
    """Digest of the exact batch (dtype, shape and bytes of input_ids, attention_mask, and
    position_ids where given; a bool 4D mask is hashed as bytes, not widened)."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none")
            continue
        tensor = tensor.detach().to("cpu")
        tensor = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
        array = tensor.contiguous().numpy()
        digest.update(f"{array.dtype}{tuple(array.shape)}".encode())
        digest.update(array.tobytes())
    return digest.digest()


@dataclass
class PrefixStats:
    """Counters in units of one decoder layer run on one batch."""

    computed: int = 0
    skipped: int = 0
    hits: int = 0
    misses: int = 0
    stored: int = 0
    evicted: int = 0

    @property
    def skip_fraction(self) -> float:
        total = self.computed + self.skipped
        return self.skipped / total if total else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "skip_fraction": self.skip_fraction}


class PrefixCache:
    """Hidden states after depth d, keyed by (layer-prefix id, batch digest), evicted LRU by bytes.

    Prefixes are interned in a trie (`prefix_ids`), so a key is an exact tuple of layer keys, not a
    hash of one. Checkpoints are kept at depths that are multiples of `stride` and at the full depth
    (a candidate promoted to a larger rung repeats its earlier, rung-aligned batches exactly: it
    then runs only the final norm and head on them). `storage_device` None keeps
    tensors where the model computed them; "cpu" offloads them (copied back on a hit).
    """

    def __init__(self, max_bytes: int, *, stride: int = 1, storage_device: str | torch.device | None = None
                 ) -> None:
        if max_bytes < 0:
            raise ConfigError(f"prefix cache max_bytes must be >= 0, got {max_bytes}; 0 turns it off.")
        if stride < 1:
            raise ConfigError(f"prefix cache stride must be >= 1, got {stride}.")
        self.max_bytes = int(max_bytes)
        self.stride = int(stride)
        self.storage_device = torch.device(storage_device) if storage_device is not None else None
        self.stats = PrefixStats()
        self.nbytes = 0
        self._nodes: dict[tuple[int, LayerKey], int] = {}
        self._entries: OrderedDict[tuple[int, bytes], torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def prefix_ids(self, keys: Sequence[LayerKey]) -> list[int]:
        """ids[d - 1] identifies the prefix keys[:d]; equal prefixes get equal ids."""
        ids, parent = [], 0
        for key in keys:
            node = self._nodes.get((parent, key))
            if node is None:
                node = self._nodes[(parent, key)] = len(self._nodes) + 1
            ids.append(node)
            parent = node
        return ids

    def wants(self, depth: int, n_layers: int) -> bool:
        return self.max_bytes > 0 and (depth == n_layers or depth % self.stride == 0)

    def lookup(self, ids: Sequence[int], batch: bytes) -> tuple[int, torch.Tensor | None]:
        """(depth, hidden states) of the deepest cached prefix of `ids` for `batch`; (0, None) if none."""
        for depth in range(len(ids), 0, -1):
            key = (ids[depth - 1], batch)
            hidden = self._entries.get(key)
            if hidden is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return depth, hidden
        self.stats.misses += 1
        return 0, None

    def store(self, prefix_id: int, batch: bytes, hidden: torch.Tensor) -> None:
        """Keep `hidden` (not copied unless offloaded: decoder layers never write their inputs)."""
        key = (prefix_id, batch)
        size = hidden.numel() * hidden.element_size()
        if key in self._entries or size > self.max_bytes:
            return
        while self._entries and self.nbytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()
            self.stats.evicted += 1
        if self.storage_device is not None and hidden.device != self.storage_device:
            hidden = hidden.to(self.storage_device)
        self._entries[key] = hidden
        self.nbytes += size
        self.stats.stored += 1

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


class PrefixCachedLM(nn.Module):
    """A stitched causal LM that resumes from cached hidden states; called like the model itself.

    Returns an object with `.logits` (what `scoring.batching.forward_logits` reads). Always runs
    under `torch.inference_mode()` and without a KV cache: it is for scoring, not for generation.
    The layer list is captured at wrap time, so it stays this genome's even after a later build.
    """

    def __init__(self, model: nn.Module, keys: Sequence[LayerKey], cache: PrefixCache) -> None:
        super().__init__()
        self.model = model
        self.__dict__["steps"] = LayerwiseForward(model)  # views into `model`, not a 2nd child
        self.layers = self.steps.layers
        if len(self.layers) != len(keys):
            raise ConfigError(f"model has {len(self.layers)} layers, the genome keeps {len(keys)}.")
        self.cache = cache
        self.prefix_ids = cache.prefix_ids(keys)

    @property
    def config(self):
        return self.model.config

    @property
    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    @torch.inference_mode()
    def final_hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                            position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, H) hidden states after the final norm, resuming from the deepest cached prefix;
        what `lm_head` reads (shared-context scoring gathers only the rows it scores)."""
        cache, steps, n_layers = self.cache, self.steps, len(self.layers)
        batch = batch_key(input_ids, attention_mask, position_ids)
        depth, hidden = cache.lookup(self.prefix_ids, batch) if cache.max_bytes else (0, None)
        if hidden is None:
            hidden_states = steps.embed(input_ids)
        else:
            hidden_states = hidden.to(input_ids.device) if hidden.device != input_ids.device else hidden
        # masks and rotary embeddings take dtype and device from the hidden states
        layer_kwargs = steps.layer_kwargs(hidden_states, attention_mask, position_ids)
        for position in range(depth, n_layers):
            hidden_states = self.layers[position](hidden_states, **layer_kwargs[position])
            if cache.wants(position + 1, n_layers):
                cache.store(self.prefix_ids[position], batch, hidden_states)
        cache.stats.skipped += depth
        cache.stats.computed += n_layers - depth
        return steps.stack.norm(hidden_states)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **_: Any):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        hidden_states = self.final_hidden_states(input_ids, attention_mask, position_ids)
        return CausalLMOutputWithPast(logits=self.lm_head(hidden_states))


class PrefixReuse:
    """One prefix cache for one stitcher's candidates; `wrap` makes a stitched model reuse it."""

    def __init__(self, max_bytes: int = DEFAULT_PREFIX_CACHE_BYTES, *, stride: int = 1,
                 storage_device: str | torch.device | None = None) -> None:
        self.cache = PrefixCache(max_bytes, stride=stride, storage_device=storage_device)
        self._warned: set[str] = set()

    @property
    def stats(self) -> PrefixStats:
        return self.cache.stats

    @staticmethod
    def supports(model: nn.Module) -> bool:
        return LayerwiseForward.supports(model)

    def wrap(self, model: nn.Module, genome: Genome) -> nn.Module:
        """`model` (just built from `genome`) with prefix reuse, or `model` itself if unsupported."""
        if self.cache.max_bytes == 0:
            return model
        if not self.supports(model):
            model_type = str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))
            if model_type not in self._warned:
                self._warned.add(model_type)
                logger.info("prefix reuse supports %s, not %r: scoring the plain model",
                            ", ".join(SUPPORTED_MODEL_TYPES), model_type)
            return model
        return PrefixCachedLM(model, layer_keys(genome), self.cache)
