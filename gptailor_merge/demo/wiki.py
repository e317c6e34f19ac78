"""English Wikipedia prose from the sample that ships inside the gensim wheel (CC BY-SA).

Fetches the pinned wheel (`sources.PinnedSource`, checked by digest) into the sources cache,
reads the bz2 dump straight from the zip (gensim is never installed or imported) and strips the
wiki markup down to plain paragraphs. Returns a list of (title, text) articles; knows nothing about splits or tokens.
"""

from __future__ import annotations

import bz2
import html
import logging
import re
import zipfile
from pathlib import Path

from gptailor_merge.demo.sources import CorpusUnavailableError, PinnedSource

logger = logging.getLogger(__name__)

# One fixed wheel, whatever the local platform, so every machine reads the same bytes.
GENSIM_WHEEL = PinnedSource(
    requirement="gensim==4.4.0",
    filename="gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    sha256="91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
    pip_args=("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
              "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"),
)
DUMP_MEMBER = (
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)

_SKIP_LINK_PREFIXES = ("file:", "image:", "category:", "media:", "wikipedia:", "wp:", "help:")
_MIN_PARAGRAPH_CHARS = 120


def read_dump(wheel: Path) -> str:
    """The XML text of the Wikipedia dump inside the wheel."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(DUMP_MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise CorpusUnavailableError(
            f"{wheel} has no readable {DUMP_MEMBER} ({exc}). Fix: delete {wheel} and build again."
        ) from exc
    return bz2.decompress(raw).decode("utf-8")


def _strip_nested(text: str, pattern: re.Pattern[str]) -> str:
    """Remove innermost-first matches until none is left (templates and tables nest)."""
    while True:
        text, n = pattern.subn("", text)
        if n == 0:
            return text


_CONVERT = re.compile(r"\{\{convert\|([\d.,]+)\|([a-zA-Z]+)[^{}]*\}\}", re.I)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TAGGED = re.compile(r"<(gallery|math|code|pre|timeline|imagemap|score)[^>]*>.*?</\1>", re.S | re.I)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL = re.compile(r"\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]")
_EMPHASIS = re.compile(r"'{2,}")
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_DANGLING = re.compile(r"\s*[,;]\s*\)|\(\s*[,;]\s*")
_SPACE = re.compile(r"[ \t\u00a0]+")


def _link_text(match: re.Match[str]) -> str:
    target, _, label = match.group(1).partition("|")
    if target.strip().lower().startswith(_SKIP_LINK_PREFIXES) or re.match(r"^[a-z-]{2,12}:", target):
        return ""
    return (label.rsplit("|", 1)[-1] if label else target).strip()


def clean_markup(markup: str) -> list[str]:
    """Plain-text paragraphs of one article's wiki markup; lists, headings and tables dropped."""
    text = html.unescape(html.unescape(markup))  # XML escaping, then wiki entities (&nbsp;)
    text = _CONVERT.sub(lambda m: f"{m.group(1)} {m.group(2)}", text)
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _TAGGED.sub("", text)
    text = _strip_nested(text, _TEMPLATE)
    text = _strip_nested(text, _TABLE)
    text = _TAG.sub("", text)
    while True:  # innermost links first: captions hold links
        text, n = _LINK.subn(_link_text, text)
        if n == 0:
            break
    text = _EXTERNAL.sub(lambda m: m.group(1), text)
    text = _EMPHASIS.sub("", text)
    paragraphs = []
    for line in text.split("\n"):
        line = _DANGLING.sub(lambda m: ")" if ")" in m.group(0) else "(", line)
        line = _SPACE.sub(" ", _EMPTY_PARENS.sub("", line)).strip()
        line = line.replace(" ,", ",").replace(" .", ".")
        if len(line) < _MIN_PARAGRAPH_CHARS or line[0] in "*#:;=|!{":
            continue
        if any(ch in line for ch in "{}[]<>|") or "http" in line:
            continue
        paragraphs.append(line)
    return paragraphs


_PAGE = re.compile(r"<page>.*?<title>(.*?)</title>.*?<text[^>]*>(.*?)</text>.*?</page>", re.S)


def wikipedia_articles(sources_dir: Path, *, min_chars: int = 400) -> list[tuple[str, str]]:
    """(title, text) for every non-redirect article with at least `min_chars` of clean prose."""
    articles = []
    for match in _PAGE.finditer(read_dump(GENSIM_WHEEL.fetch(sources_dir))):
        title, markup = html.unescape(match.group(1)), match.group(2)
        if markup.lstrip().upper().startswith("#REDIRECT"):
            continue
        text = "\n\n".join(clean_markup(markup))
        if len(text) >= min_chars:
            articles.append((title, text))
    logger.info("Wikipedia sample: %d articles, %d characters", len(articles),
                sum(len(t) for _, t in articles))
    return articles
