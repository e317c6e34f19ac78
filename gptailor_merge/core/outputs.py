"""Output folders this tool writes: the safety rules of `--overwrite`, temp siblings, the marker.

Every folder committed here carries a marker file, so `--overwrite` can tell our own outputs from a
user's folder. It refuses the current folder and its parents, any folder a recipe or family reads,
a run folder and anything unmarked. Writes go to a `.NAME.PID.*.tmp` sibling that is renamed into
place; siblings of dead processes are swept at the next start. No tensors, no recipes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gptailor_merge.core.errors import OutputExistsError, OutputNotWritableError

logger = logging.getLogger(__name__)

MARKER = ".gptailor-merge-output"
RUN_FOLDER_FILES = ("journal.jsonl", "run.json")  # either one makes a folder a run folder


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in RUN_FOLDER_FILES)


def is_ours(path: Path) -> bool:
    """Written by this tool: it has the marker, or it is a run's `best_model` (older runs had none)."""
    return (path / MARKER).is_file() or (path.name == "best_model" and is_run_folder(path.parent))


def local_reads(data: object) -> list[Path]:
    """Local folders a recipe mapping names (its `model:` and `base_model:` values)."""
    found: list[Path] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("model", "base_model") and isinstance(value, (str, os.PathLike)):
                path = Path(value).expanduser()
                if path.is_dir():
                    found.append(path)
            else:
                found += local_reads(value)
    elif isinstance(data, (list, tuple)):
        for item in data:
            found += local_reads(item)
    return found


def _refusal(out: Path, reads: Iterable[Path]) -> str | None:
    """Why `out` (existing, non-empty) must not be replaced, or None when it may be."""
    real = out.resolve()
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        return "it is the current folder or one of its parents"
    if is_run_folder(out):
        return "it is a run folder (journal.jsonl / run.json); its trials would be lost"
    for read in reads:
        read = Path(read).expanduser().resolve()
        if real == read or real in read.parents:
            return f"the recipe or family reads '{read}' from it"
    if not is_ours(out):
        return f"gptailor-merge did not write it (no {MARKER} marker), so it may hold other files"
    return None


def prepare_output(out_dir: str | os.PathLike, overwrite: bool, reads: Iterable[Path] = ()) -> Path:
    """Check that `out_dir` may be written (empty, absent, or with `overwrite` a folder of ours);
    sweep dead temp siblings; return its path. Nothing is deleted here."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output '{out}' is a file, not a folder; choose a folder path")
    if out.is_dir() and any(p.name != MARKER for p in out.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"output folder '{out}' exists and is not empty; choose another folder or pass "
                "--overwrite to replace it"
            )
        why = _refusal(out, reads)
        if why is not None:
            raise OutputExistsError(f"--overwrite refuses to replace '{out}': {why}. Choose a new or "
                                    "empty output folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritableError(f"cannot create '{out.parent}' ({exc.strerror}); choose an output "
                                     "folder you can write") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"cannot write into '{out.parent}' (permission denied); choose an "
                                     "output folder you can write, or fix its permissions")
    sweep_temps(out)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_temps(out: Path) -> list[Path]:
    """Remove `.NAME.*.tmp` siblings of `out` left by writes whose process is gone (kill -9)."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        parts = tmp.name[len(out.name) + 2:].split(".")
        pid = int(parts[0]) if parts and parts[0].isdigit() else None
        if pid is not None and _pid_alive(pid):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
        logger.info("removed %s, left by an interrupted write", tmp)
    return removed


def temp_sibling(out: Path) -> Path:
    """An empty temp folder next to `out` (same file system, so the final rename is atomic)."""
    try:
        return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp"))
    except OSError as exc:
        raise OutputNotWritableError(f"cannot write into '{out.parent}' ({exc.strerror}); choose an output "
                                     "folder you can write") from None


def _mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def mark(folder: Path, kind: str = "model") -> None:
    """Write the marker that lets a later `--overwrite` replace this folder."""
    info = {"tool": "gptailor-merge", "kind": kind, "written": datetime.now().isoformat(timespec="seconds"),
            "host": socket.gethostname()}
    (folder / MARKER).write_text(json.dumps(info) + "\n")


def commit_folder(tmp: Path, out: Path, kind: str = "model") -> Path:
    """Mark a finished temp folder, give it the ordinary mode (mkdtemp makes 0700) and move it into
    place; a replaced folder is first renamed aside, so a crash never leaves neither."""
    mark(tmp, kind)
    os.chmod(tmp, _mode())
    old = None
    if out.is_dir() and any(out.iterdir()):
        old = out.parent / f".{out.name}.{os.getpid()}.old.tmp"
        os.replace(out, old)
    elif out.is_dir():
        out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


@dataclass(frozen=True)
class Stage:
    """A folder being written: fill `tmp`; `out` is where it lands."""

    tmp: Path
    out: Path


@contextmanager
def staged_folder(out_dir: str | os.PathLike, *, overwrite: bool = False, reads: Iterable[Path] = (),
                  kind: str = "model") -> Iterator[Stage]:
    """`prepare_output`, then a temp sibling to fill; it is marked and moved into place when the
    block ends without an exception, removed otherwise (a killed write leaves no half folder)."""
    out = prepare_output(out_dir, overwrite, reads=reads)
    tmp = temp_sibling(out)
    try:
        yield Stage(tmp, out)
        commit_folder(tmp, out, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
