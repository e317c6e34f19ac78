"""Architecture adapter: where a causal LM keeps its decoder layers, how a tailored model's config
lists them, and the per-layer forward that prefix reuse runs.

In: a Family (mergekit's tensor names) or a loaded transformers model. Out: module paths, a config
for the kept layers, embed / layer / head steps equal to the model's own forward. Supporting an
architecture in prefix reuse: add its `model_type` to `LAYERWISE_MODEL_TYPES` and its test to
tests/test_architecture.py. Mirrors transformers 5's `LlamaModel` / `Qwen2Model.forward`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gptailor_merge.core.errors import GenomeError

LAYERWISE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""Architectures whose forward `LayerwiseForward` reproduces bitwise (tests/test_architecture.py):
embed -> rotary -> one mask per layer type -> layers -> norm -> lm_head, nothing else (Gemma, for
one, scales its embeddings and soft-caps its logits, so it is not among them)."""


@dataclass(frozen=True)
class DecoderLayout:
    """Where the decoder layer list lives, e.g. `model.layers` (the one definition of it)."""

    layers_path: str

    @classmethod
    def of_family(cls, family: Any) -> DecoderLayout:
        """From mergekit's tensor names of layer 0 (`model.layers.0.self_attn.q_proj.weight`)."""
        return cls.of_tensor_name(family.layer_tensor_names(0)[0])

    @classmethod
    def of_config(cls, config: Any) -> DecoderLayout:
        """From mergekit's architecture definition for a transformers config (as a Family does)."""
        from mergekit.architecture import arch_info_for_config
        from mergekit.architecture.base import ConfiguredModelArchitecture

        info = arch_info_for_config(config)
        if info is None:
            raise GenomeError(f"mergekit 0.1.5 has no architecture definition for {config.architectures}")
        arch = ConfiguredModelArchitecture(info=info, config=config).get_module("default")
        return cls.of_tensor_name(arch.layer_weights(0)[0].name)

    @classmethod
    def of_tensor_name(cls, name: str) -> DecoderLayout:
        head, sep, _ = name.partition(".0.")
        if not sep:
            raise GenomeError(f"cannot find the decoder layer list from tensor name {name!r}")
        return cls(head)

    @property
    def stack_path(self) -> str:
        """The module holding the layer list (embeddings, layers, final norm; no LM head)."""
        return self.layers_path.rpartition(".")[0]

    def relative(self, layer_idx: int, tensor_name: str) -> str:
        """`model.layers.3.mlp.up_proj.weight` -> `mlp.up_proj.weight` (a name inside the layer)."""
        prefix = f"{self.layers_path}.{layer_idx}."
        if not tensor_name.startswith(prefix):
            raise GenomeError(f"tensor {tensor_name!r} is not in decoder layer {layer_idx} ({prefix}*)")
        return tensor_name[len(prefix):]

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path)

    def stack(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.stack_path) if self.stack_path else model

    def set_layers(self, model: nn.Module, modules: Sequence[nn.Module]) -> None:
        """Put `modules` in as the model's layer list, each told its new position (`layer_idx`)."""
        for position, module in enumerate(modules):
            for sub in module.modules():
                if hasattr(sub, "layer_idx"):
                    sub.layer_idx = position
        parent_path, _, attr = self.layers_path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, nn.ModuleList(modules))


def tailored_config(base_config: Any, kept: Sequence[int]) -> Any:
    """A copy of the base's config for a model of the `kept` source layers, in order: the layer
    count, and per-layer lists (`layer_types`: which attention each layer uses) cut to match."""
    config = copy.deepcopy(base_config)
    n_layers = int(base_config.num_hidden_layers)
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n_layers:
        config.layer_types = [layer_types[i] for i in kept]
    return config


def set_config(model: nn.Module, config: Any) -> None:
    """Give the model and every submodule that holds the model's config (the decoder stack) `config`."""
    model.config = config
    for sub in model.modules():
        if sub is not model and hasattr(getattr(sub, "config", None), "num_hidden_layers"):
            sub.config = config


def layer_attention_types(config: Any) -> list[str]:
    """Per layer, `full_attention` or `sliding_attention`, as the model's forward picks its mask:
    `layer_types` where the config lists them (Qwen2/3), else the config's `sliding_window`."""
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list):
        return list(layer_types)
    kind = "sliding_attention" if getattr(config, "sliding_window", None) is not None else "full_attention"
    return [kind] * int(config.num_hidden_layers)


def _accepted(fn: Any) -> set[str]:
    return set(inspect.signature(fn).parameters)


class LayerwiseForward:
    """The model's forward split into steps, so a caller can start at any layer (prefix reuse):
    `embed`, `layer_kwargs` (masks and rotary embeddings of one batch), `layers[i]`, `head`.
    Without a KV cache; for scoring, not generation."""

    def __init__(self, model: nn.Module) -> None:
        from transformers import masking_utils

        if not self.supports(model):
            raise GenomeError(f"layer-wise forward supports {', '.join(LAYERWISE_MODEL_TYPES)}, not "
                              f"{getattr(model.config, 'model_type', type(model).__name__)!r}")
        self.model = model
        layout = DecoderLayout.of_config(model.config)
        self.stack = layout.stack(model)
        self.layers = list(layout.layers(model))
        self.types = layer_attention_types(self.stack.config)
        if len(self.types) != len(self.layers):
            raise GenomeError(f"config lists {len(self.types)} layer types for {len(self.layers)} layers; "
                              "build the config with architecture.tailored_config")
        self._mask_fns = {"full_attention": masking_utils.create_causal_mask,
                          "sliding_attention": masking_utils.create_sliding_window_causal_mask}
        mask_params = _accepted(masking_utils.create_causal_mask)
        layer_params = _accepted(type(self.layers[0]).forward) if self.layers else set()
        # transformers renamed past_key_values -> cache and input_embeds -> inputs_embeds over 4.x/5.x
        self._cache_name = "cache" if "cache" in mask_params else "past_key_values"
        self._embeds_name = "inputs_embeds" if "inputs_embeds" in mask_params else "input_embeds"
        self._mask_wants_positions = "cache_position" in mask_params
        self._layer_cache_name = "cache" if "cache" in layer_params else "past_key_values"
        self._layer_wants_positions = "cache_position" in layer_params

    @staticmethod
    def supports(model: nn.Module) -> bool:
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) not in LAYERWISE_MODEL_TYPES or not hasattr(model, "lm_head"):
            return False
        try:
            DecoderLayout.of_config(config)
        except (GenomeError, TypeError, ValueError, AttributeError):  # no mergekit definition
            return False
        return True

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.stack.embed_tokens(input_ids)

    def layer_kwargs(self, reference: torch.Tensor, attention_mask: torch.Tensor | None,
                     position_ids: torch.Tensor | None = None) -> list[dict[str, Any]]:
        """Per layer, its keyword arguments for this batch; `reference`: any (B, T, H) hidden
        state (its dtype and device set the mask's and the rotary embeddings'). A 4D
        `attention_mask` is used as given (transformers' rule), with its `position_ids`."""
        seq_len = reference.shape[1]
        cache_position = torch.arange(seq_len, device=reference.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)
        mask_kwargs = {"config": self.stack.config, self._embeds_name: reference,
                       "attention_mask": attention_mask, self._cache_name: None,
                       "position_ids": position_ids}
        if self._mask_wants_positions:
            mask_kwargs["cache_position"] = cache_position
        masks = {kind: self._mask_fns[kind](**mask_kwargs) for kind in sorted(set(self.types))}
        position_embeddings = self.stack.rotary_emb(reference, position_ids=position_ids)
        shared = {"position_ids": position_ids, self._layer_cache_name: None, "use_cache": False,
                  "position_embeddings": position_embeddings}
        if self._layer_wants_positions:
            shared["cache_position"] = cache_position
        return [{**shared, "attention_mask": masks[kind]} for kind in self.types]

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.stack.norm(hidden_states))
