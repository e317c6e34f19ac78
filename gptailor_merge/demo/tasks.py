"""Demo evaluation data: multiple-choice tasks and perplexity texts from search/heldout splits.

In: each domain's search and heldout documents plus the tokenizer (for length limits). Out:
`tasks/{task}.{split}.jsonl` ({"context", "choices", "answer"}) and `text/{domain}.{split}.jsonl`
({"text"}), in a fixed seeded order. Never reads a train split.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from gptailor_merge.demo.corpora import DomainCorpus

logger = logging.getLogger(__name__)

TASK_DOMAINS: dict[str, str] = {
    "prose_cloze": "prose", "code_next_line": "code", "math_answer": "math"}
EVAL_SPLITS: tuple[str, ...] = ("search", "heldout")
N_CHOICES = 4

_SENTENCE_START = re.compile(r"(?:^|(?<=[.!?])\s+)(?=[A-Z\"(])|(?<=\n\n)", re.M)
_LINE_START = re.compile(r"^", re.M)

Example = dict[str, object]


class _Fits:
    """Token-length check: BOS + context + longest choice must fit in the training window."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, max_tokens: int) -> None:
        self._backend = tokenizer.backend_tokenizer
        self.max_tokens = max_tokens

    def __call__(self, *texts: str) -> bool:
        encs = self._backend.encode_batch(list(texts), add_special_tokens=False)
        return 1 + sum(len(e.ids) for e in encs) <= self.max_tokens


def _sentences(doc: str) -> list[tuple[str, bool]]:
    """(sentence, starts_paragraph) for each sentence of a prose document."""
    out = []
    for paragraph in doc.split("\n\n"):
        parts = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"(])", paragraph)]
        out.extend((s, i == 0) for i, s in enumerate(parts) if s)
    return out


def text_samples(docs: Sequence[str], domain: str, n: int, target_chars: int, fits: _Fits,
                 rng: random.Random) -> list[str]:
    """Up to `n` distinct substrings of `docs` of up to `target_chars`, cut at unit boundaries."""
    pattern = _SENTENCE_START if domain == "prose" else _LINE_START
    bounds = [sorted({m.start() for m in pattern.finditer(d)} | {len(d)}) for d in docs]
    samples: list[str] = []
    seen: set[str] = set()
    for _ in range(20 * n):
        if len(samples) >= n:
            break
        k = rng.randrange(len(docs))
        doc, b = docs[k], bounds[k]
        i = rng.randrange(len(b) - 1)
        ends = [e for e in b[i + 1:] if e - b[i] <= target_chars]
        while ends:
            text = doc[b[i]: ends[-1]].strip() if domain == "prose" else (
                doc[b[i]: ends[-1]].strip("\n").rstrip())
            if fits(text):
                break
            ends.pop()
        if not ends or len(text) < target_chars // 3 or text in seen:
            continue
        seen.add(text)
        samples.append(text)
    return samples


def _pick_distractors(true: str, pool: Sequence[str], rng: random.Random, k: int = N_CHOICES - 1
                      ) -> list[str] | None:
    """`k` distinct lines of `pool` other than `true` (None when the pool has too few)."""
    if len(pool) < k + 1:
        return None
    choices = [c for c in rng.sample(pool, min(len(pool), 4 * k)) if c != true]
    unique = list(dict.fromkeys(choices))[:k]
    return unique if len(unique) == k else None


def _example(context: str, true: str, distractors: list[str], rng: random.Random) -> Example:
    answer = rng.randrange(N_CHOICES)
    choices = list(distractors)
    choices.insert(answer, true)
    return {"context": context, "choices": choices, "answer": answer}


N_SHUFFLED = 2  # distractors that are the true continuation with its order destroyed
_CODE_TOKEN = re.compile(r"\w+|[^\w\s]|\s+")


def shuffled_words(sentence: str, rng: random.Random, k: int = N_SHUFFLED) -> list[str] | None:
    """`k` distinct reorderings of the sentence's inner words (first and last word stay, so the
    capital and the full stop stay where prose has them): the same words, characters and length
    as the true sentence, wrong only in order. None when the sentence has too few words."""
    words = sentence.split(" ")
    if len(words) < 6:
        return None
    inner, out = words[1:-1], []
    for _ in range(20 * k):
        perm = inner[:]
        rng.shuffle(perm)
        text = " ".join([words[0], *perm, words[-1]])
        if text != sentence and text not in out:
            out.append(text)
            if len(out) == k:
                return out
    return None


def shuffled_code(line: str, rng: random.Random, k: int = N_SHUFFLED) -> list[str] | None:
    """`k` distinct versions of a code line with its tokens (names, numbers, operators,
    brackets) permuted over the same slots, indentation and spacing kept: same characters and
    length, broken syntax. None when the line has fewer than 4 tokens."""
    indent = line[: len(line) - len(line.lstrip())]
    parts = _CODE_TOKEN.findall(line[len(indent):])
    slots = [i for i, p in enumerate(parts) if not p.isspace()]
    if len(slots) < 4:
        return None
    out = []
    for _ in range(20 * k):
        tokens = [parts[i] for i in slots]
        rng.shuffle(tokens)
        new = list(parts)
        for i, t in zip(slots, tokens, strict=True):
            new[i] = t
        text = indent + "".join(new)
        if text != line and text not in out:
            out.append(text)
            if len(out) == k:
                return out
    return None


def prose_cloze(docs: Sequence[str], rng: random.Random, fits: _Fits) -> Iterable[Example]:
    """Context: up to three sentences of a paragraph; choices: its next sentence vs two
    word-order shuffles of it and one sentence of similar length from another document."""
    per_doc = [_sentences(d) for d in docs]
    items = [(k, i) for k, sents in enumerate(per_doc) for i in range(1, len(sents))
             if not sents[i][1] and 30 <= len(sents[i][0]) <= 200]
    rng.shuffle(items)
    for k, i in items:
        sents, true = per_doc[k], per_doc[k][i][0]
        first = i - 1  # the context stays inside the paragraph
        while first > 0 and not sents[first][1] and i - first < 3:
            first -= 1
        shuffles = shuffled_words(true, rng)
        pool = [s for j, other in enumerate(per_doc) if j != k for s, _ in other
                if 0.8 * len(true) <= len(s) <= 1.25 * len(true)]
        other = _pick_distractors(true, pool, rng, 1)
        if shuffles is None or other is None:
            continue
        choices = [" " + c for c in (true, *shuffles, *other)]
        for start in range(first, i):  # longest context that fits
            context = " ".join(s for s, _ in sents[start:i])
            if all(fits(context, c) for c in choices):
                yield _example(context, choices[0], choices[1:], rng)
                break


def _code_line_ok(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= 10 and not stripped.startswith(("#", '"""', "'''"))


def code_next_line(docs: Sequence[str], rng: random.Random, fits: _Fits) -> Iterable[Example]:
    """Context: up to 8 preceding lines; choices: the true next line vs two token shuffles of it
    and one same-indent line of another file (each choice starts with the newline that ends
    the context)."""
    per_doc = [d.split("\n") for d in docs]
    indent = {}  # (doc, indent width) -> candidate lines
    for k, lines in enumerate(per_doc):
        for line in lines:
            if _code_line_ok(line):
                indent.setdefault(len(line) - len(line.lstrip()), []).append((k, line))
    items = [(k, i) for k, lines in enumerate(per_doc) for i in range(3, len(lines))
             if _code_line_ok(lines[i])]
    rng.shuffle(items)
    for k, i in items:
        lines, true = per_doc[k], per_doc[k][i]
        pool = [line for j, line in indent.get(len(true) - len(true.lstrip()), []) if j != k]
        if len(pool) < 3 * N_CHOICES:  # rare indent: any other file's line will do
            pool = [line for group in indent.values() for j, line in group if j != k]
        shuffles = shuffled_code(true, rng)
        other = _pick_distractors(true, pool, rng, 1)
        if shuffles is None or other is None:
            continue
        choices = ["\n" + c for c in (true, *shuffles, *other)]
        for start in range(max(0, i - 8), i - 2):  # longest context that fits
            context_lines = lines[start:i]
            context = "\n".join(context_lines)
            if sum(bool(c.strip()) for c in context_lines) < 2:
                break
            if all(fits(context, c) for c in choices):
                yield _example(context, choices[0], choices[1:], rng)
                break


_NUMBER = re.compile(r"\d+")


def wrong_results(question: str, answer: int, rng: random.Random, k: int = N_CHOICES - 1
                  ) -> list[int]:
    """`k` wrong answers that look like answers: one of the question's own numbers, then the
    results of the wrong operation on its numbers (a + b where the problem asks a * b, a * b
    where it asks a + b, a - b, the sum of all), then near misses (+-1, +-2, +-10) if those run
    short. A model that has learnt which operation the words call for rejects them; one that
    copies numbers, or only knows that answers are numbers, does not. (Distractors of the true
    answer's digit count, which need exact arithmetic, leave the demo's models at chance.)"""
    numbers = [int(x) for x in _NUMBER.findall(question)]
    wrong = set()
    for i, x in enumerate(numbers):
        for y in numbers[i + 1:]:
            wrong |= {x + y, abs(x - y), x * y}
    wrong.add(sum(numbers))
    operands = sorted(set(numbers) - {answer})
    picked = rng.sample(operands, min(1, len(operands), k))
    wrong = sorted(wrong - {answer} - set(numbers))
    picked += rng.sample(wrong, min(k - len(picked), len(wrong)))
    misses = sorted({answer + o for o in (-10, -2, -1, 1, 2, 10) if answer + o >= 0}
                    - {answer} - set(picked))
    picked += rng.sample(misses, k - len(picked))
    return picked


def math_answer(docs: Sequence[str], rng: random.Random, fits: _Fits) -> Iterable[Example]:
    """Context: `Q: ... A:`; choices: the answer vs one of the question's numbers and two results
    of the wrong operation on them (`wrong_results`)."""
    problems = [line for d in docs for line in d.split("\n") if " A: " in line]
    rng.shuffle(problems)
    for line in problems:
        question, _, answer = line.rpartition(" A: ")
        context = question + " A:"
        distractors = [f" {m}" for m in wrong_results(question, int(answer), rng)]
        if all(fits(context, c) for c in (f" {answer}", *distractors)):
            yield _example(context, f" {answer}", distractors, rng)


TASK_BUILDERS: dict[str, Callable[[Sequence[str], random.Random, _Fits], Iterable[Example]]] = {
    "prose_cloze": prose_cloze, "code_next_line": code_next_line, "math_answer": math_answer}


def write_jsonl(path: Path, rows: Iterable[dict[str, object]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_eval_files(root: Path, corpora: dict[str, DomainCorpus], *, n_examples: int,
                     n_texts: int, text_chars: int, tokenizer: PreTrainedTokenizerFast,
                     max_tokens: int, seed: int, search_examples: int | None = None,
                     search_texts: int | None = None) -> dict[str, int]:
    """Write every task and text file under `root`; returns the row count of each file.
    `search_examples` / `search_texts` size the search split where it differs (validation is
    carved from it); each file's leading rows do not depend on its size."""
    fits = _Fits(tokenizer, max_tokens)
    counts: dict[str, int] = {}
    wanted: dict[str, int] = {}
    for split in EVAL_SPLITS:
        n_rows, n_samples = ((search_examples or n_examples, search_texts or n_texts)
                             if split == "search" else (n_examples, n_texts))
        for task, domain in TASK_DOMAINS.items():
            rng = random.Random(f"demo-task-{task}-{split}-{seed}")
            rows = []
            for row in TASK_BUILDERS[task](corpora[domain].split(split), rng, fits):
                rows.append(row)
                if len(rows) >= n_rows:
                    break
            key = f"tasks/{task}.{split}"
            counts[key], wanted[key] = write_jsonl(root / f"{key}.jsonl", rows), n_rows
        for domain, corpus in corpora.items():
            rng = random.Random(f"demo-text-{domain}-{split}-{seed}")
            texts = text_samples(corpus.split(split), domain, n_samples, text_chars, fits, rng)
            key = f"text/{domain}.{split}"
            counts[key] = write_jsonl(root / f"{key}.jsonl", ({"text": t} for t in texts))
            wanted[key] = n_samples
    short = {k: v for k, v in counts.items() if v < wanted[k]}
    if short:
        logger.warning("fewer rows than asked for: %s", short)
    return counts
