"""Synthetic families: random-weight base + perturbed "fine-tunes", built in-process in seconds.

For unit tests, speed benchmarks and the GPU check (any shape, e.g. Llama-2-7B-shaped on a GPU).
Not for quality claims: the candidates are noise around the base, not real fine-tunes.

Why here, beside the demo family, and not in tests/: like the demo it is an embedded family that
needs no download, and its users outside the test suite (`benchmarks/speed.py --family synthetic`,
`benchmarks/gpu_check.sh`, `benchmarks/repair_gpu_check.py`) import it from the installed package,
without putting tests/ on their path. No module of the library imports it
(tests/test_architecture_layers.py checks); only tests and benchmarks do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "def add(a, b):\n    return a + b\n",
    "Q: 12 + 7 = ? A: 19",
    "to be or not to be, that is the question",
]


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_TEXT * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _config(arch: str, n_layers: int, hidden: int, vocab_size: int, **overrides):
    from transformers import GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    common.update(overrides)
    if arch == "qwen3":  # layer_types that differ by layer: sliding-window attention from layer 2 on
        common = {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 2, **common}
    if arch == "gemma":
        common = {"head_dim": hidden // 4, **common}
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig,
               "qwen3": Qwen3Config, "gemma": GemmaConfig}
    return classes[arch](**common)


def make_synthetic_family(
    out_dir: str | os.PathLike,
    *,
    arch: str = "llama",
    n_layers: int = 4,
    hidden: int = 32,
    n_candidates: int = 3,
    noise: float = 0.05,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    **config_overrides,
) -> tuple[Path, list[Path]]:
    """Write base + `n_candidates` perturbed copies as HF folders; returns (base, candidates)."""
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    tokenizer = tiny_tokenizer()
    config = _config(arch, n_layers, hidden, len(tokenizer), **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    paths = []
    for index in range(n_candidates + 1):
        name = "base" if index == 0 else f"cand{index - 1}"
        if index:
            gen = torch.Generator(device="cpu").manual_seed(seed * 1000 + index)
            with torch.no_grad():
                for key, param in model.state_dict().items():
                    delta = torch.randn(param.shape, generator=gen) * noise * base_state[key].float().std().clamp_min(1e-3)
                    param.copy_(base_state[key] + delta.to(param.device, param.dtype))
        path = out / name
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1:]


# ---- families held in memory (speed benchmarks, GPU check) ----------------------------------
@dataclass
class MemoryMember:
    """A family member whose tensors live in memory (a `family.Member` look-alike for `Stitcher`)."""

    name: str
    config: object
    tensors: dict[str, torch.Tensor]
    path: Path = Path("/nonexistent")

    @property
    def model_id(self) -> str:
        return f"memory:{self.name}"

    def tensor(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)


@dataclass
class MemoryFamily:
    """Base + candidates held as tensors (e.g. in GPU memory): what `Stitcher` reads, no disk;
    how the speed benchmark and the GPU check build a 7B-shaped family without writing 4 x 13 GB.

    Candidates hold only their decoder-layer tensors (embeddings, norm and head come from the base);
    `write_member` puts a member on disk (base's non-layer tensors) for the mergekit backend.
    """

    base: MemoryMember
    candidates: tuple[MemoryMember, ...]
    layer_names: list[list[str]] = field(default_factory=list)

    @property
    def members(self) -> tuple[MemoryMember, ...]:
        return (self.base, *self.candidates)

    @property
    def n_layers(self) -> int:
        return int(self.base.config.num_hidden_layers)

    @property
    def n_candidates(self) -> int:
        return len(self.candidates)

    def layer_tensor_names(self, layer_idx: int) -> list[str]:
        return self.layer_names[layer_idx]

    def with_candidates(self, count: int) -> MemoryFamily:
        return MemoryFamily(self.base, self.candidates[:count], self.layer_names)


def build_memory_family(config, *, n_candidates: int = 3, noise: float = 0.05, seed: int = 0,
                        device: str = "cpu", dtype: torch.dtype = torch.float32
                        ) -> tuple[MemoryFamily, nn.Module]:
    """A random base built on `device` and `n_candidates` perturbed copies of its layers:
    candidate j's tensor = base + N(0, (noise * std(base))^2), as `make_synthetic_family` does."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    config.architectures = [type(model).__name__]  # mergekit finds its architecture info by this
    state = dict(model.state_dict())
    layer_names = [[n for n in state if n.startswith(f"model.layers.{i}.")]
                   for i in range(config.num_hidden_layers)]
    base = MemoryMember("base", config, state)
    candidates = []
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    for j in range(n_candidates):
        tensors = {}
        with torch.no_grad():
            for names in layer_names:
                for n in names:
                    b = state[n]
                    scale = noise * b.float().std().clamp_min(1e-3).item()
                    delta = torch.randn(b.shape, generator=generator, device=device, dtype=torch.float32)
                    tensors[n] = (b.float() + delta * scale).to(dtype)
                    del delta
        candidates.append(MemoryMember(f"cand{j}", config, tensors))
    return MemoryFamily(base, tuple(candidates), layer_names), model


def write_member(family: MemoryFamily, index: int, out: Path, tokenizer) -> Path:
    """Member `index` (0 = base) as a Hugging Face folder (one safetensors file) for mergekit."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    member = family.members[index]
    tensors = {n: member.tensors.get(n, t).detach().to("cpu").contiguous()
               for n, t in family.base.tensors.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    family.base.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
