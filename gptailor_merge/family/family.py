"""A family: one base model and K fine-tunes of it, checked to be tailorable together.

Resolves local folders or Hub ids, compares configs and tensor shapes from safetensors headers
before any weight loads, and serves tensors lazily (memory-mapped) so a family of large models never
sits in RAM at once. Knows nothing of genomes or recipes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from gptailor_merge.core.errors import FamilyMismatchError, ModelFileError, ModelNotFoundError

logger = logging.getLogger(__name__)

_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]

# a model folder's tokenizer files: every writer of a model folder (both backends, LaCo, repair)
# copies them from the base
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
)


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the base's tokenizer files that are not already in `dst`."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def is_local_path(model_id: str) -> bool:
    """Whether `model_id` names a local folder (absolute, ./ or ~/, or deeper than a Hub `owner/name`)."""
    return Path(model_id).expanduser().is_absolute() or model_id.startswith((".", "~")) or model_id.count("/") > 1


def resolve_model_path(model_id: str) -> Path:
    """A local folder for `model_id`: the folder itself, or the Hub snapshot (cache or download)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model folder '{model_id}' has no config.json; point at a Hugging Face model "
                "folder (config.json + *.safetensors)",
                model=model_id,
            )
        return path.resolve()
    if is_local_path(model_id):
        relative = "" if path.is_absolute() else (
            f" (a relative path is read from the current directory, {Path.cwd()}: run from the folder "
            "it is relative to, as a recipe's own mergekit-yaml run would, or write it absolute)")
        raise ModelNotFoundError(
            f"model folder '{model_id}' does not exist; check the path{relative}", model=model_id
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # offline, unknown repo, bad id: all mean "not reachable here"
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        reason = "HF_HUB_OFFLINE is set" if offline else type(exc).__name__
        raise ModelNotFoundError(
            f"model '{model_id}' is not a local folder and could not be fetched from the "
            f"Hugging Face Hub ({reason}). Pass an existing local folder, or download it first "
            f"where there is network (`hf download {model_id}`).",
            model=model_id,
        ) from exc


def load_model_config(path: Path) -> PretrainedConfig:
    """`AutoConfig` of a model folder; an unreadable config.json is a ModelFileError naming it."""
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:  # JSONDecodeError, OSError, ValueError (unknown model_type), ...
        raise ModelFileError(
            f"'{Path(path) / 'config.json'}' cannot be read as a model config ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); fix or replace that file"
        ) from None


def check_model_folder(path: Path) -> None:
    """A model folder's config.json and safetensors headers are readable (cheap; no tensor loads)."""
    load_model_config(path)
    member = Member(name=Path(path).name, model_id=str(path), path=Path(path), config=None)
    _ = member.weight_map


@dataclass
class Member:
    """One model of the family: its reference as given, its local folder and its config."""

    name: str
    model_id: str
    path: Path
    config: PretrainedConfig
    _handles: dict = field(default_factory=dict, repr=False)

    @cached_property
    def weight_map(self) -> dict[str, Path]:
        """Tensor name -> safetensors file, from the index or the single file."""
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            mapping = json.loads(index.read_text())["weight_map"]
            return {name: self.path / file for name, file in mapping.items()}
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise ModelNotFoundError(
                f"model '{self.name}' at {self.path} has no *.safetensors weights; convert it "
                "with `model.save_pretrained(dir, safe_serialization=True)`",
                model=self.model_id,
            )
        mapping = {}
        for file in files:
            for key in self._handle(file).keys():  # noqa: SIM118 - safe_open has no __iter__
                mapping[key] = file
        return mapping

    def _handle(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(file, framework="pt")
            except Exception as exc:  # SafetensorError: empty, truncated, corrupt header
                raise ModelFileError(
                    f"model '{self.name}': '{file}' is not a readable safetensors file ({exc}); it is "
                    "truncated or corrupt. Download or save the model again"
                ) from None
        return self._handles[file]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(self.weight_map[name]).get_slice(name).get_shape())

    def tensor(self, name: str) -> torch.Tensor:
        """Load one tensor (memory-mapped read of just that tensor)."""
        try:
            file = self.weight_map[name]
        except KeyError:
            raise FamilyMismatchError(
                f"model '{self.name}' has no tensor '{name}'", model=self.name, field=name
            ) from None
        return self._handle(file).get_tensor(name)


def _num_layers(config: PretrainedConfig) -> int:
    return int(config.num_hidden_layers)


class Family:
    """Base + candidates with the same architecture and shapes; the thing a genome tailors."""

    def __init__(self, base: Member, candidates: Sequence[Member]) -> None:
        self.base = base
        self.candidates = tuple(candidates)
        self.members = (base, *self.candidates)
        self._check()

    @classmethod
    def load(
        cls,
        base: str | os.PathLike,
        candidates: Sequence[str | os.PathLike],
        names: Sequence[str] | None = None,
    ) -> Family:
        """Resolve every model reference and check compatibility (configs and tensor headers only)."""
        refs = [str(base), *(str(c) for c in candidates)]
        if names is None:
            names = [_default_name(r) for r in refs]
        if len(names) != len(refs):
            raise FamilyMismatchError(f"{len(names)} names for {len(refs)} models")
        members = []
        for name, ref in zip(names, refs):
            if "+" in ref or "@" in ref:
                raise ModelNotFoundError(
                    f"model reference '{ref}' contains '+' or '@', which mergekit parses as "
                    "LoRA/revision syntax; move or rename the folder",
                    model=ref,
                )
            path = resolve_model_path(ref)
            config = load_model_config(path)
            # a folder is named by its absolute path as given, not its symlinks' target: a run searched
            # on a folder since moved resumes once a symlink at the old path points at the new place
            local = Path(ref).expanduser()
            model_id = os.path.abspath(local) if local.is_dir() else ref
            members.append(Member(name=name, model_id=model_id, path=path, config=config))
        paths = [m.path for m in members]
        for i, member in enumerate(members):
            if member.path in paths[:i]:
                first = members[paths.index(member.path)]
                raise FamilyMismatchError(
                    f"'{member.model_id}' ({member.name}) is the same model as '{first.model_id}' "
                    f"({first.name}); each family member must be a distinct model: drop the repeat",
                    model=member.name,
                )
        return cls(members[0], members[1:])

    # ---- checks ----------------------------------------------------------------------------
    def _check(self) -> None:
        base = self.base
        fields = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size",
                  "intermediate_size", "num_attention_heads", "num_key_value_heads")
        for cand in self.candidates:
            for name in fields:
                want, got = getattr(base.config, name, None), getattr(cand.config, name, None)
                if want != got:
                    raise FamilyMismatchError(
                        f"candidate '{cand.name}' has {name}={got}, base '{base.name}' has "
                        f"{name}={want}. A family shares one architecture; drop '{cand.name}' "
                        "from the candidates or use fine-tunes of this base.",
                        model=cand.name,
                        field=name,
                    )
        names = self.tensor_names
        for cand in self.candidates:
            missing = [n for n in names if n not in cand.weight_map]
            if missing:
                raise FamilyMismatchError(
                    f"candidate '{cand.name}' lacks tensor '{missing[0]}' that base "
                    f"'{base.name}' has ({len(missing)} missing); it is not a fine-tune of "
                    "this base's architecture",
                    model=cand.name,
                    field=missing[0],
                )
            for n in names:
                if cand.shape(n) != base.shape(n):
                    raise FamilyMismatchError(
                        f"candidate '{cand.name}' tensor '{n}' has shape {cand.shape(n)}, "
                        f"base '{base.name}' has {base.shape(n)}; shapes must agree",
                        model=cand.name,
                        field=n,
                    )

    # ---- architecture ---------------------------------------------------------------------
    @cached_property
    def arch(self):
        """mergekit's configured architecture for the base (tensor names per layer)."""
        from mergekit.architecture import arch_info_for_config
        from mergekit.architecture.base import ConfiguredModelArchitecture

        info = arch_info_for_config(self.base.config)
        if info is None:
            raise FamilyMismatchError(
                f"mergekit 0.1.5 has no architecture definition for "
                f"{self.base.config.architectures}; only architectures mergekit supports can "
                "be tailored",
                model=self.base.name,
                field="architectures",
            )
        return ConfiguredModelArchitecture(info=info, config=self.base.config).get_module(
            "default"
        )

    @property
    def n_layers(self) -> int:
        return _num_layers(self.base.config)

    @property
    def n_candidates(self) -> int:
        return len(self.candidates)

    def layer_tensor_names(self, layer_idx: int) -> list[str]:
        """Tensor names of one decoder layer that exist in the base's files."""
        names = [w.name for w in self.arch.layer_weights(layer_idx)]
        return [n for n in names if n in self.base.weight_map]

    @cached_property
    def pre_weight_names(self) -> list[str]:
        return [w.name for w in self.arch.pre_weights()]

    @cached_property
    def post_weight_names(self) -> list[str]:
        return [w.name for w in self.arch.post_weights()]

    @cached_property
    def tensor_names(self) -> list[str]:
        return sorted(self.base.weight_map)

    # ---- sizes ------------------------------------------------------------------------------
    def _numel(self, names: Sequence[str]) -> int:
        total = 0
        for n in names:
            count = 1
            for d in self.base.shape(n):
                count *= d
            total += count
        return total

    @cached_property
    def layer_param_counts(self) -> list[int]:
        return [self._numel(self.layer_tensor_names(i)) for i in range(self.n_layers)]

    @cached_property
    def total_params(self) -> int:
        return self._numel(self.tensor_names)

    def params_with_layers(self, kept: Sequence[int]) -> int:
        """Parameter count of a model that keeps only the `kept` layers."""
        removed = set(range(self.n_layers)) - set(kept)
        return self.total_params - sum(self.layer_param_counts[i] for i in removed)

    def summary(self) -> str:
        lines = [
            f"family: base '{self.base.name}' + {self.n_candidates} candidates "
            f"({', '.join(c.name for c in self.candidates)}); {self.base.config.model_type}, "
            f"{self.n_layers} layers, {self.total_params:,} parameters",
        ]
        per_layer = self.layer_param_counts
        lines.append(
            f"per layer: {per_layer[0]:,} parameters"
            if len(set(per_layer)) == 1
            else "per layer: " + ", ".join(f"{i}:{c:,}" for i, c in enumerate(per_layer))
        )
        return "\n".join(lines)


def _default_name(ref: str) -> str:
    return Path(ref.rstrip("/")).name or ref
