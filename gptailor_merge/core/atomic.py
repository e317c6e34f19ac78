"""Atomic writes: every output is written under a temporary name beside it and renamed into place,
so a killed run never leaves a half-written file or folder that looks complete (docs/ARCHITECTURE.md, core).

Files: `atomic_path` (any writer), `write_text_atomic`, `write_json_atomic`. Folders:
`atomic_folder` (build in a hidden temp sibling, then replace). No torch, nothing of ours;
model output folders (marker, overwrite rules) are `outputs.py`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write; renamed onto `path` when the block ends
    without an exception, deleted otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are read like any file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def _temp_sibling(out: Path) -> Path:
    """A new empty hidden folder next to `out` (same filesystem, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))


def _commit_folder(tmp: Path, out: Path) -> Path:
    """Move a finished temp folder into place (replacing an old one)."""
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)
    return out


@contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yields a temp folder beside `out` to fill; it replaces `out` when the block ends without an
    exception and is removed otherwise."""
    out = Path(out)
    tmp = _temp_sibling(out)
    try:
        yield tmp
        _commit_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
