"""The run folder's guards: its lock, its fingerprint, what `--resume` may change, and cleanup.

`optimize` opens a run here (fresh or resumed), holds an exclusive lock file (PID, host, process start
time) while it runs, checks `run.json`'s fingerprint (family, target, tasks with a content hash, the
settings that change scores) before any weight loads, and removes a fresh folder again when the run
fails before its first trial is journaled. No search, no scoring.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from gptailor_merge.core.config import DEMO, RunConfig
from gptailor_merge.core.errors import (
    ConfigError,
    OutputNotWritableError,
    ResumeError,
    RunLockedError,
)
from gptailor_merge.search.journal import Journal, write_json_atomic

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
FINGERPRINT_VERSION = 3  # 3: the validation split carved from search, racing
# settings that change what a trial scores; everything else is a budget or says where trials run
SCORE_SEARCH_FIELDS = ("optimizer", "merge_methods", "seed", "max_examples", "eta", "n_rungs", "lambda_range",
                       "density_range", "max_sources", "use_candidates", "seeds", "metric", "chance_z",
                       "mc_objective", "seed_fraction", "local_fraction", "calibration_texts",
                       "min_rung_examples", "promotion", "race_z")
SCORE_EVAL_FIELDS = ("max_length", "dtype")
# what flags (or --config) given with --resume may change: budgets, and where or how trials run
RESUME_MAY_CHANGE = ("search.n_trials", "search.time_budget_s", "search.workers", "search.ray_address",
                     "eval.device", "eval.batch_size", "eval.heldout_examples",
                     "eval.prefix_cache_bytes", "search.finalists", "search.validation_examples")


# ---- lock -----------------------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so a reused PID is not mistaken for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start is None or _process_start(pid) in (None, start)


class RunLock:
    """`RUN_DIR/.lock`, created exclusively; a lock whose process is gone (same host) is stale."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def acquire(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
              "since": datetime.now().isoformat(timespec="seconds")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None:
                    raise RunLockedError(
                        f"run folder '{self.path.parent}' is in use by process {holder.get('pid')} on "
                        f"{holder.get('host')} (since {holder.get('since')}); wait for that run to finish. "
                        f"If it is gone (e.g. a crashed machine), delete {self.path}"
                    ) from None
                continue
            except PermissionError:
                raise OutputNotWritableError(f"cannot write into run folder '{self.path.parent}' (permission "
                                             "denied); choose a folder you can write") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(me) + "\n")
            self.held = True
            return self
        raise RunLockedError(f"could not lock run folder '{self.path.parent}'; another process keeps "
                             f"creating {self.path}")

    def _holder(self) -> dict | None:
        """The live holder's record, or None after removing a stale lock."""
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            if time.time() - self.path.stat().st_mtime < 10:  # being written right now
                return {"pid": "?", "host": "?", "since": "just now"}
            holder, pid, host = {}, -1, socket.gethostname()
        if host != socket.gethostname() or _alive(pid, holder.get("start")):
            return holder
        logger.warning("removing the stale lock of process %s (no longer running) in %s", pid, self.path.parent)
        self.path.unlink(missing_ok=True)
        return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


# ---- opening a run ---------------------------------------------------------------------------------
@dataclasses.dataclass
class OpenRun:
    config: RunConfig
    run_dir: Path
    lock: RunLock
    created: bool  # this call made the folder (or filled an empty one): a failed start removes it

    def close(self, failed: bool) -> None:
        """Release the lock; after a failed fresh start with no journaled trial, leave no folder."""
        self.lock.release()
        journal = self.run_dir / "journal.jsonl"
        if failed and self.created and not (journal.is_file() and journal.stat().st_size > 0):
            shutil.rmtree(self.run_dir, ignore_errors=True)
            logger.info("removed run folder %s: the run failed before its first trial", self.run_dir)


def open_fresh(config: RunConfig) -> OpenRun:
    out = Path(config.out_dir or f"runs/{datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"run folder '{out}' is not empty; resume it with --resume {out} or choose another --out")
    existed = out.is_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritableError(f"cannot create run folder '{out}' ({exc.strerror}); choose an --out "
                                     "you can write") from None
    lock = RunLock(out).acquire()
    run = OpenRun(config, out, lock, created=True)
    try:
        (out / "config.yaml").write_text(config.to_yaml())
    except OSError as exc:
        lock.release()
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise OutputNotWritableError(f"cannot write '{out / 'config.yaml'}' ({exc.strerror}); choose an --out "
                                     "you can write") from None
    return run


def open_resumed(run_dir: Path, requested: RunConfig | None) -> OpenRun:
    """Lock the run, read its own config and apply what `requested` (flags, --config) may change."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ResumeError(f"'{run_dir}' is not a run folder (no config.yaml); pass the folder optimize printed")
    lock = RunLock(run_dir).acquire()
    try:
        saved = RunConfig.load(run_dir / "config.yaml")
        config = saved if requested is None else merge_resume(saved, requested, run_dir)
        if config != saved:
            write_atomic_text(run_dir / "config.yaml", config.to_yaml())
    except BaseException:
        lock.release()
        raise
    return OpenRun(config, run_dir, lock, created=False)


def write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def merge_resume(saved: RunConfig, requested: RunConfig, run_dir: Path) -> RunConfig:
    """The run's config with the budgets and placement of `requested`; any other difference is
    refused, naming it. `--trials` may extend a run but not cut it below its journaled trials."""
    old, new = _flat(saved.model_dump(mode="json")), _flat(requested.model_dump(mode="json"))
    if new.get("out_dir") not in (None, old.get("out_dir")) and Path(new["out_dir"]).resolve() != run_dir.resolve():
        raise ResumeError(f"--out {new['out_dir']} differs from the resumed run folder '{run_dir}'; drop --out")
    new["out_dir"] = old.get("out_dir")
    refused = [f"{key} (run: {old.get(key)!r}, given: {new.get(key)!r})" for key in sorted(set(old) | set(new))
               if old.get(key) != new.get(key) and key not in RESUME_MAY_CHANGE]
    if refused:
        raise ResumeError(
            f"run '{run_dir}' cannot change {'; '.join(refused)} on --resume: its journaled trials were "
            "scored with the run's own settings. Resume without those flags, or start a new run with --out"
        )
    done = len(Journal(run_dir / "journal.jsonl").load())
    if new["search.n_trials"] < done:
        raise ResumeError(f"--trials {new['search.n_trials']} is below the {done} trials run '{run_dir}' has "
                          f"journaled; give at least {done} (--trials extends a run)")
    changed = {k: new[k] for k in RESUME_MAY_CHANGE if old.get(k) != new.get(k)}
    if changed:
        logger.info("resume applies %s", ", ".join(f"{k}={v!r}" for k, v in changed.items()))
    data = saved.model_dump(mode="json")
    for key, value in changed.items():
        part, field = key.split(".")
        data[part][field] = value
    return RunConfig.from_dict(data, source=f"{run_dir / 'config.yaml'} with the --resume flags")


# ---- fingerprint ----------------------------------------------------------------------------------
def task_hash(task) -> str:
    """sha256 of a task's examples (which are search, validation, held-out; not their seeded order,
    which the seed already fixes): an edited file changes it."""
    payload = json.dumps([sorted(json.dumps(dataclasses.asdict(e), sort_keys=True, default=str) for e in split)
                          for split in (task.search, task.validation, task.heldout)])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def fingerprint(config: RunConfig, family, n_keep: int, tasks: Sequence) -> dict:
    """Everything that shapes the search's scores, as written to run.json."""
    demo = config.family.base == DEMO
    return {
        "version": FINGERPRINT_VERSION,
        "base": f"demo:{config.family.demo_preset}" if demo else family.base.model_id,
        "candidates": [] if demo else [c.model_id for c in family.candidates],
        "n_layers": family.n_layers,
        "n_keep": n_keep,
        "tasks": [[spec, task.name, task_hash(task)] for spec, task in zip(config.tasks, tasks)],
        "search": {k: v for k, v in config.search.model_dump(mode="json").items() if k in SCORE_SEARCH_FIELDS},
        "eval": {k: v for k, v in config.eval.model_dump(mode="json").items() if k in SCORE_EVAL_FIELDS},
    }


def check_fingerprint(run_dir: Path, current: dict, resumed: bool) -> None:
    """On resume, `run.json` must describe the same search (a pre-version-2 header is compared on
    the keys it has); then write the header."""
    header = run_dir / "run.json"
    started = datetime.now().isoformat()
    if resumed and header.is_file():
        try:
            old_header = json.loads(header.read_text())
            old = old_header["fingerprint"]
            started = old_header.get("started", started)
        except (ValueError, KeyError, TypeError) as exc:
            raise ResumeError(f"{header} is not readable ({type(exc).__name__}: {exc}); it records what the run "
                              "searches. Restore it, or delete it to resume on the run's config.yaml as it "
                              "stands") from None
        keys = current if old.get("version") else [k for k in old if k in current]
        diff = [k for k in keys if old.get(k) != current.get(k)]
        if diff:
            shown = "; ".join(f"{k}: run has {old.get(k)!r}, now {current.get(k)!r}" for k in diff)
            raise ResumeError(
                f"run '{run_dir}' was started with other settings ({shown}). Its journaled trials were "
                f"scored with those: restore {run_dir / 'config.yaml'} and the task files, or start a new run"
            )
    write_json_atomic(header, {"fingerprint": current, "started": started})


def clamp_max_examples(config: RunConfig, tasks: Sequence) -> tuple[RunConfig, dict | None]:
    """`search.max_examples` above the largest search split cannot be used: clamp it, say so, and
    return what was asked and used (for the summary). A task with fewer search examples than a
    rung scores all of its own there."""
    if not tasks:
        return config, None
    largest = max(tasks, key=lambda t: len(t.search))
    asked, held = config.search.max_examples, len(largest.search)
    if asked <= held:
        return config, None
    clamped = config.model_copy(update={"search": config.search.model_copy(update={"max_examples": held})})
    logger.warning("search.max_examples %d is more than the largest search split (task %r) holds (%d); using %d "
                   "examples per task at full fidelity, rungs %s", asked, largest.name, held, held,
                   clamped.search.rungs())
    return clamped, {"asked": asked, "used": held, "rungs": clamped.search.rungs()}
