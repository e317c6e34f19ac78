"""The three demo corpora (prose, code, math), split by document into train/search/heldout.

prose: the Wikipedia sample inside the gensim wheel (`wiki.py`); code: this Python's standard
library sources; math: seeded generated problems (`mathgen.py`). No document is in two splits.
Returns plain strings only; tokens, tasks and models live elsewhere.
"""

from __future__ import annotations

import logging
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from gptailor_merge.demo.layout import DOMAINS
from gptailor_merge.demo.mathgen import math_documents
from gptailor_merge.demo.presets import DemoPreset
from gptailor_merge.demo.wiki import wikipedia_articles

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "search", "heldout")
EVAL_FRACTION = 0.1  # of the documents, for each of search and heldout
_EVAL_CHARS = {"default": 400_000, "tiny": 30_000}  # cap per eval split, keeps tasks cheap
_SKIP_CODE_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                             "encodings", "__pycache__"})
_MAX_CODE_FILE_CHARS = 40_000


@dataclass(frozen=True)
class DomainCorpus:
    """One domain's documents, each split a tuple of strings in a fixed seeded order."""

    domain: str
    train: tuple[str, ...]
    search: tuple[str, ...]
    heldout: tuple[str, ...]

    def split(self, name: str) -> tuple[str, ...]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


def stdlib_sources() -> list[tuple[str, str]]:
    """(relative path, source) of the standard library's .py files, sorted by path.

    Tests, vendored packages and the generated codec tables are skipped; long files are cut at
    a line boundary near 40k characters.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_CODE_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) > _MAX_CODE_FILE_CHARS:
            text = text[: text.rfind("\n", 0, _MAX_CODE_FILE_CHARS) + 1]
        if text.strip():
            sources.append((rel.as_posix(), text.expandtabs(4)))
    return sources


def _take(docs: list[str], n_chars: int) -> tuple[str, ...]:
    """The leading documents of `docs` up to about `n_chars` characters (at least one)."""
    taken, total = [], 0
    for doc in docs:
        if taken and total >= n_chars:
            break
        taken.append(doc)
        total += len(doc)
    return tuple(taken)


def split_documents(domain: str, docs: list[str], rng: random.Random, preset: DemoPreset
                    ) -> DomainCorpus:
    """Shuffle whole documents, give ~10% each to heldout and search, the rest to train."""
    order = list(docs)
    rng.shuffle(order)
    n_eval = max(2, round(EVAL_FRACTION * len(order)))
    if len(order) < 2 * n_eval + 1:
        raise ValueError(f"{domain}: {len(order)} documents are too few to split three ways")
    eval_chars = _EVAL_CHARS.get(preset.name, 400_000)
    return DomainCorpus(
        domain=domain,
        heldout=_take(order[:n_eval], eval_chars),
        search=_take(order[n_eval: 2 * n_eval], eval_chars),
        train=_take(order[2 * n_eval:], preset.max_train_chars),
    )


def load_corpora(preset: DemoPreset, seed: int, sources_dir: Path) -> dict[str, DomainCorpus]:
    """All three domains, deterministic in (`preset`, `seed`, the local stdlib, the pinned wheel)."""
    prose = [text for _, text in wikipedia_articles(sources_dir)]
    code = [text for _, text in stdlib_sources()]
    math_rng = random.Random(f"demo-math-{seed}")
    # Problems are distinct across all documents, so no problem is in two splits.
    n_math_docs_chars = preset.max_train_chars + 2 * _EVAL_CHARS.get(preset.name, 400_000)
    math = math_documents(math_rng, int(n_math_docs_chars * 1.25))
    corpora = {}
    for domain, docs in zip(DOMAINS, (prose, code, math), strict=True):
        corpora[domain] = split_documents(domain, docs, random.Random(f"demo-split-{domain}-{seed}"),
                                          preset)
        c = corpora[domain]
        logger.info("%s corpus: %d/%d/%d documents, %d/%d/%d characters (train/search/heldout)",
                    domain, len(c.train), len(c.search), len(c.heldout),
                    *(sum(map(len, c.split(s))) for s in SPLITS))
    return corpora
