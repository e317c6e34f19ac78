"""The three demo corpora (prose, code, math), split by document into train/search/heldout.

prose: the Wikipedia sample inside the gensim wheel (`wiki.py`); code: the pinned Django wheel's
sources; math: seeded generated problems (`mathgen.py`). No document is in two splits.
Returns plain strings only; tokens, tasks and models live elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

from gptailor_merge.demo.layout import DOMAINS
from gptailor_merge.demo.mathgen import math_documents
from gptailor_merge.demo.presets import DemoPreset
from gptailor_merge.demo.sources import PinnedSource
from gptailor_merge.demo.wiki import GENSIM_WHEEL, wikipedia_articles

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "search", "heldout")
EVAL_FRACTION = 0.1  # of the documents, for each of search and heldout
_EVAL_CHARS = {"default": 400_000, "tiny": 30_000}  # cap per eval split, keeps tasks cheap
# The code corpus: a pinned, pure-Python wheel (the same bytes on every machine; BSD-3-Clause).
CODE_WHEEL = PinnedSource(
    requirement="django==5.1.4",
    filename="Django-5.1.4-py3-none-any.whl",
    sha256="236e023f021f5ce7dee5779de7b286565fdea5f4ab86bae5338e3f7b69896cf0",
)
_SKIP_CODE_DIRS = frozenset({"test", "tests", "locale", "__pycache__"})
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


def code_sources(sources_dir: Path) -> list[tuple[str, str]]:
    """(path, source) of the pinned Django wheel's .py files, sorted by path.

    Read from the zip, never installed. Tests, locale format tables and empty files are skipped;
    long files are cut at a line boundary near 40k characters.
    """
    wheel = CODE_WHEEL.fetch(sources_dir)
    sources = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".py")):
            parts = name.split("/")
            if _SKIP_CODE_DIRS.intersection(parts[:-1]) or parts[-1].startswith("test_"):
                continue
            text = zf.read(name).decode("utf-8")
            if len(text) > _MAX_CODE_FILE_CHARS:
                text = text[: text.rfind("\n", 0, _MAX_CODE_FILE_CHARS) + 1]
            if text.strip():
                sources.append((name, text.expandtabs(4)))
    return sources


def corpus_sha256(corpus: DomainCorpus) -> str:
    """One digest over every document of every split: equal digests, equal corpora."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for doc in corpus.split(split):
            digest.update(f"{split}\0{len(doc)}\0".encode())
            digest.update(doc.encode("utf-8"))
    return digest.hexdigest()


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
    """All three domains, deterministic in (`preset`, `seed`) and the pinned wheels alone."""
    prose = [text for _, text in wikipedia_articles(sources_dir)]
    code = [text for _, text in code_sources(sources_dir)]
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


SOURCE_NOTES = {
    "prose": "English Wikipedia sample shipped in the gensim 4.4.0 wheel (CC BY-SA)",
    "code": "Python sources of the Django 5.1.4 wheel (BSD-3-Clause)",
    "math": "generated by gptailor_merge.demo.mathgen (seeded; no external source)",
}


def sources_record(corpora: dict[str, DomainCorpus], sources_dir: Path) -> dict[str, dict[str, str]]:
    """What a family manifest says of its corpora: each one's pinned file, its digest, and the
    digest of the documents built from it (the one to compare between machines)."""
    files = {"prose": GENSIM_WHEEL, "code": CODE_WHEEL}
    return {domain: {"note": SOURCE_NOTES[domain],
                     **(files[domain].record(sources_dir) if domain in files else {}),
                     "corpus_sha256": corpus_sha256(corpus)}
            for domain, corpus in corpora.items()}
