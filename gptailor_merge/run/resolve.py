"""Config -> the loaded family and tasks: the demo family (built if needed) or the config's models.

Shared by `optimize`, `prune` and `evaluate`, so each resolves families and tasks the same way.
"""

from __future__ import annotations

from gptailor_merge.core.config import DEMO, RunConfig
from gptailor_merge.family.family import Family


def resolve_family(config: RunConfig, progress: bool = True) -> tuple[Family, list[str]]:
    """Load the family (building the demo one if asked) and register its built-in tasks."""
    from gptailor_merge.scoring import register_task_dir

    fam = config.family
    if fam.base == DEMO:
        from gptailor_merge.demo import build_demo_family

        demo = build_demo_family(preset=fam.demo_preset, progress=progress)
        register_task_dir(demo.root, replace=True)
        names = ["base", *demo.domains]
        return Family.load(demo.base, demo.candidates, names=names), names
    family = Family.load(fam.base, fam.candidates, names=fam.names)
    return family, [m.name for m in family.members]


def load_tasks(config: RunConfig):
    from gptailor_merge.scoring import load_task

    return [checked_task(load_task, spec, seed=config.search.seed) for spec in config.tasks]


def checked_task(load, spec: str, **kwargs):
    """`load(spec)` with the faults of files and offline datasets as one-line TaskErrors."""
    from gptailor_merge.core.errors import GptailorError, TaskError

    try:
        return load(spec, **kwargs)
    except GptailorError:
        raise
    except UnicodeDecodeError as exc:
        raise TaskError(f"task {spec!r}: a task file is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "save it as UTF-8") from None
    except Exception as exc:
        if str(spec).startswith(("lm_eval:", "hf:", "disk:")):
            raise TaskError(f"task {spec!r} could not be loaded ({type(exc).__name__}: {str(exc)[:200]}); its "
                            "dataset must be cached here when the Hub is offline (HF_HUB_OFFLINE), or use a "
                            "local JSONL task") from None
        raise
