"""Where a demo family lives on disk and how to tell that it is complete.

`DemoFamily` is the frozen handle the rest of the package uses (member folders, task and text
files). A family counts as complete only once its marker file exists; the marker is written
last. No torch here: reading a family's layout must stay cheap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from gptailor_merge.core.errors import ModelNotFoundError

MARKER = "DEMO_FAMILY.json"
DOMAINS: tuple[str, ...] = ("prose", "code", "math")
TASK_NAMES: tuple[str, ...] = ("prose_cloze", "code_next_line", "math_answer")
MEMBER_FILES: tuple[str, ...] = ("config.json", "model.safetensors", "tokenizer.json",
                                 "tokenizer_config.json")
BUILD_HINT = "python -m gptailor_merge demo build"


def default_cache_dir() -> Path:
    """$GPTAILOR_CACHE, else ~/.cache/gptailor_merge."""
    env = os.environ.get("GPTAILOR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gptailor_merge"


def default_family_dir(preset: str, seed: int) -> Path:
    return default_cache_dir() / f"demo-{preset}-seed{seed}"


@dataclass(frozen=True)
class DemoFamily:
    """A built demo family: a base, three fine-tunes of it, and its evaluation files."""

    root: Path
    base: Path
    candidates: tuple[Path, ...]
    domains: tuple[str, ...] = DOMAINS
    task_names: tuple[str, ...] = TASK_NAMES

    @classmethod
    def at(cls, root: Path) -> DemoFamily:
        """The layout under `root` (nothing is checked; see `load_demo_family`)."""
        root = Path(root)
        return cls(root=root, base=root / "base", candidates=tuple(root / d for d in DOMAINS))

    @property
    def members(self) -> dict[str, Path]:
        """Member name -> folder: base first, then the candidates in domain order."""
        return {"base": self.base, **dict(zip(self.domains, self.candidates, strict=True))}

    def task_file(self, task: str, split: str) -> Path:
        return self.root / "tasks" / f"{task}.{split}.jsonl"

    def text_file(self, domain: str, split: str) -> Path:
        return self.root / "text" / f"{domain}.{split}.jsonl"

    def manifest(self) -> dict[str, object]:
        """The marker's content: preset, seed, build version, corpus sizes, specialisation."""
        return json.loads((self.root / MARKER).read_text(encoding="utf-8"))


def missing_files(family: DemoFamily) -> list[Path]:
    """Every file a complete family must have that is not there (marker included)."""
    wanted = [family.root / MARKER]
    wanted += [m / f for m in family.members.values() for f in MEMBER_FILES]
    wanted += [family.task_file(t, s) for t in family.task_names for s in ("search", "heldout")]
    wanted += [family.text_file(d, s) for d in family.domains for s in ("search", "heldout")]
    return [p for p in wanted if not p.is_file()]


def is_complete(root: Path, *, preset: str, seed: int, build_version: int) -> bool:
    """True when `root` holds a finished build of exactly this preset, seed and build code."""
    family = DemoFamily.at(root)
    if missing_files(family):
        return False
    try:
        manifest = family.manifest()
    except (OSError, ValueError):
        return False
    return (manifest.get("preset"), manifest.get("seed"), manifest.get("build_version")) == (
        preset, seed, build_version)


def load_demo_family(root: Path) -> DemoFamily:
    """The family at `root`; ModelNotFoundError naming the build command if it is incomplete."""
    family = DemoFamily.at(root)
    missing = missing_files(family)
    if missing:
        shown = ", ".join(str(p.relative_to(family.root)) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelNotFoundError(
            f"no complete demo family at {family.root}: missing {shown}{more}. Build it with "
            f"`{BUILD_HINT}` (or gptailor_merge.demo.build_demo_family()).",
            model=str(family.root),
        )
    return family
