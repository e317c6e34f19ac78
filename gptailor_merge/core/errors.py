"""Typed errors. Each also inherits a builtin so callers can catch it the ordinary way.

Messages say what is wrong, the offending value and where it came from, and how to fix it.
"""

from __future__ import annotations


class GptailorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(GptailorError, ValueError):
    """A run config, CLI flag or target that cannot work."""


class FamilyMismatchError(GptailorError, ValueError):
    """Base and candidates cannot be tailored together (architecture, shapes, layer counts)."""

    def __init__(self, message: str, *, model: str = "", field: str = "") -> None:
        super().__init__(message)
        self.model = model
        self.field = field


class ModelNotFoundError(GptailorError, FileNotFoundError):
    """A model path that does not exist, or a Hub id that cannot be reached offline."""

    def __init__(self, message: str, *, model: str = "") -> None:
        super().__init__(message)
        self.model = model


class GenomeError(GptailorError, ValueError):
    """A tailoring that breaks an invariant (index out of range, wrong kept count, bad parameter)."""


class RecipeError(GptailorError, ValueError):
    """A recipe YAML that is malformed or does not describe a tailoring of its family."""


class OutputExistsError(GptailorError, FileExistsError):
    """An output folder that exists and is not empty; pass overwrite to replace it."""


class TaskError(GptailorError, ValueError):
    """A task name or file that does not exist or does not parse."""


class ResumeError(GptailorError, ValueError):
    """A run folder that cannot be resumed with this config."""


class HubError(GptailorError, ValueError):
    """A push that cannot start: bad repo id, no token, offline."""


class MissingDependencyError(GptailorError, ImportError):
    """An optional extra (e.g. Ray for parallel workers) that a setting needs but is not installed."""


class ClusterError(GptailorError, ConnectionError):
    """A Ray cluster that cannot be joined or cannot hold the requested workers."""


class WorkerDiedError(GptailorError, RuntimeError):
    """A trial whose worker process died more often than the pool retries it; the trial fails."""


class OutputNotWritableError(GptailorError, PermissionError):
    """An output or run folder that cannot be created or written (read-only, no permission)."""


class JournalError(GptailorError, ValueError):
    """A journal line that is neither a trial record nor a torn last write; the file is left as is."""


class RunLockedError(GptailorError, RuntimeError):
    """A run folder that another live `optimize` holds."""


class ModelFileError(GptailorError, ValueError):
    """A model file (config.json, *.safetensors) that exists but cannot be read: truncated or corrupt."""


class RepairError(GptailorError, ValueError):
    """A repair of the cuts that cannot run: unsupported layer, no calibration text, singular fit."""
