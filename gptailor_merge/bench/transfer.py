"""Transfer texts: held-out text from sources no family member was trained on, never seen by a search.

`transfer_prose`: the long descriptions (README prose) in the installed packages' metadata;
`transfer_code`: Python source of third-party packages (the demo's code corpus is the standard
library). Chunked into ~`chars`-character texts, in a fixed order, at most `n_texts` each; the
package versions and a digest of the texts go into the benchmark's JSON. Only benchmarks use it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import re
from pathlib import Path

PROSE_PACKAGES = ("torch", "transformers", "datasets", "nevergrad", "pydantic", "huggingface_hub",
                  "mergekit", "tqdm", "numpy", "safetensors", "tokenizers", "matplotlib", "ray",
                  "lm_eval", "accelerate", "pyyaml", "networkx", "sympy", "jinja2", "requests")
CODE_PACKAGES = ("nevergrad", "mergekit", "tqdm", "yaml", "pydantic", "safetensors", "jinja2")


# the transfer tasks in the order quality.py scores them (and its intervals draw them)
TRANSFER_TASKS = ("transfer_prose", "transfer_code")


def _chunks(text: str, chars: int) -> list[str]:
    """Whole lines, packed into chunks of about `chars` characters."""
    out, current = [], []
    size = 0
    for line in text.splitlines():
        current.append(line)
        size += len(line) + 1
        if size >= chars:
            out.append("\n".join(current).strip())
            current, size = [], 0
    return [c for c in out if len(c) >= chars // 2]


def _prose(text: str) -> str:
    """README markdown to plain prose: no code blocks, links, images, tables or HTML."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith(("|", "    ", "$", ">>>"))]
    return "\n".join(ln for ln in lines if len(ln.split()) >= 6)


def transfer_texts(n_texts: int = 64, chars: int = 800) -> tuple[dict[str, list[str]], dict]:
    """{"transfer_prose": [...], "transfer_code": [...]} and their provenance."""
    prose, sources = [], {}
    for name in PROSE_PACKAGES:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        pieces = _chunks(_prose(body), chars)
        if pieces:
            sources[f"prose:{name}"] = dist.version
            prose += pieces[:8]
    code = []
    for name in CODE_PACKAGES:
        try:
            module = __import__(name)
        except ImportError:
            continue
        root = Path(module.__file__).parent
        files = sorted(p for p in root.rglob("*.py") if "test" not in p.as_posix().lower())
        taken = 0
        for path in files:
            pieces = _chunks(path.read_text(encoding="utf-8", errors="replace"), chars)
            code += pieces[:2]
            taken += len(pieces[:2])
            if taken >= 10:
                break
        sources[f"code:{name}"] = getattr(module, "__version__", "?")
    texts = dict(zip(TRANSFER_TASKS, (prose[:n_texts], code[:n_texts]), strict=True))
    digest = hashlib.sha256("\0".join(t for v in texts.values() for t in v).encode()).hexdigest()
    return texts, {"sources": sources, "n_texts": {k: len(v) for k, v in texts.items()},
                   "chars": chars, "sha256": digest}


def transfer_tasks(n_texts: int = 64, chars: int = 800):
    """The transfer texts as perplexity tasks (held-out split only is ever scored) + provenance."""
    from gptailor_merge.scoring.examples import TextExample
    from gptailor_merge.scoring.task import make_task

    texts, info = transfer_texts(n_texts, chars)
    tasks = []
    for name, items in texts.items():
        if len(items) >= 2:
            examples = [TextExample(t) for t in items]
            tasks.append(make_task(name, examples, examples, "gptailor_merge/bench/transfer.py"))
    return tasks, info
