"""A repaired model's folder: the model, its recipe, the fitted maps and the calibration settings.

`repair.safetensors` holds the maps (float64, keyed `layer.{i}` by the kept layer they were fused
into) and `repair.json` the `RepairSettings` plus the fit of each run; `repair_recipe` rebuilds the
folder's weights bitwise from recipe + settings (same device). Reads tasks, never searches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gptailor_merge.core.errors import ConfigError, RepairError
from gptailor_merge.core.outputs import prepare_output, staged_folder
from gptailor_merge.family.family import copy_tokenizer
from gptailor_merge.repair.calibration import repair_groups, repair_texts
from gptailor_merge.repair.fit import (
    COSINE_STEPS,
    DEFAULT_RIDGE,
    STRENGTH,
    TARGET,
    RepairInfo,
    repair_model,
)

logger = logging.getLogger(__name__)

REPAIR_METHODS = ("linear",)
SOURCES = "all"
OBJECTIVE = "cosine"
BALANCE = "tokens"
"""The defaults a repair is fitted with, chosen on validation (benchmarks/README, "Repair: chosen on
validation"): every task's search examples (texts, and each multiple-choice context with its gold
continuation), each task the same total weight, ReplaceMe's cosine objective from the
least-squares map. On SmolLM2's 25% winner (128 validation examples per task) it scored 0.876
against text-only least squares' 0.821 and kept arithmetic (0.641 against 0.500, unrepaired
0.586); on the demo family's three 25% genomes its mean was 0.990 against 0.977. The price is the
fit's time: 2-5x least squares (the cosine fit keeps the rows and runs L-BFGS)."""
REPAIR_TEXTS = 128
"""Search-split texts per text task a repair fits on by default. The map has hidden_size**2
parameters: on SmolLM2 (hidden 576) at 25% removal, 8 texts per task (2k tokens) overfit and the
repair raised transfer perplexity, 64 (17k tokens) lowered it (benchmarks/README, "Repair")."""
TARGET_WORDS = {"self": "this model's own hidden state with each removed run put back (the base's layers)",
                "base": "the dense base's hidden state"}
SETTINGS_FILE = "repair.json"
MAPS_FILE = "repair.safetensors"
RECIPE_FILE = "mergekit_config.yml"
NOTE = ("The weights differ from what the recipe alone gives: a fitted linear map is fused into the down "
        "projection of the kept layer before each removed run (ReplaceMe-style repair). Stock mergekit-yaml "
        "on the recipe gives the unrepaired model; `python -m gptailor_merge materialize mergekit_config.yml "
        "OUT --repair linear --repair-settings repair.json` gives this one.")


class RepairSettings(BaseModel):
    """How a repair was (or is to be) fitted; everything `repair_recipe` needs besides the recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["linear"] = Field("linear", description="repair method")
    target: Literal["self", "base"] = Field(
        TARGET, description="whose hidden state after a removed run is matched: the candidate's own with the "
                            "run put back (self) or the dense base's (base); see repair.fit")
    objective: Literal["lstsq", "cosine"] = Field(
        OBJECTIVE, description="least squares on the stream (lstsq) or ReplaceMe's cosine distance, from the "
                               "least-squares map (cosine); see repair.fit")
    cosine_steps: int = Field(COSINE_STEPS, ge=1, description="L-BFGS iterations of the cosine fit")
    strength: float = Field(STRENGTH, ge=0.0, le=1.0, description="each fused map is I + strength (T - I): 1 the "
                                                                  "fitted map, 0 no repair; see repair.fit")
    sources: Literal["text", "all"] = Field(
        SOURCES, description="calibrate on the text tasks only (text) or on every task, multiple-choice "
                             "contexts with their gold continuation included (all); see repair.calibration")
    balance: Literal["examples", "tokens"] = Field(
        BALANCE, description="every calibration token once (examples) or each calibration task the same "
                             "total weight (tokens); see repair.calibration")
    tasks: tuple[str, ...] = Field(description="calibration tasks, as specs that load without a "
                                               "registry (JSONL paths, hf:/disk: specs)")
    task_names: tuple[str, ...] = Field((), description="the tasks' names (for people)")
    split: Literal["search"] = Field("search", description="calibration always uses the search split")
    seed: int = Field(0, description="task example order seed")
    n_examples_per_task: int | None = Field(REPAIR_TEXTS, ge=1, description="search-split texts per task (None: all)")
    max_length: int = Field(256, ge=2, description="tokens per text (BOS included)")
    batch_size: int = Field(16, ge=1, description="texts per forward pass")
    ridge: float = Field(DEFAULT_RIDGE, ge=0.0, description="ridge, relative to mean diag(M^T M)")
    dtype: str = Field("float32", description="model dtype the maps were fitted and fused in")
    device: str = Field("cpu", description="device of the fit (bitwise reproduction needs the same)")
    n_texts: int | None = Field(None, description="calibration texts used (filled in by the fit)")
    texts_sha256: str | None = Field(None, description="digest of the calibration texts (checked on reuse)")

    @classmethod
    def load(cls, path: str | os.PathLike) -> RepairSettings:
        """From a repaired folder's repair.json (its `settings`), or a bare settings JSON."""
        path = Path(path)
        if path.is_dir():
            path = path / SETTINGS_FILE
        if not path.is_file():
            raise ConfigError(f"repair settings '{path}' do not exist; pass a repaired model folder's {SETTINGS_FILE}")
        data = json.loads(path.read_text())
        fields = dict(data.get("settings", data))
        # written before the balance existed: every token counted once, which is what rebuilds it
        fields.setdefault("balance", "examples")
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(f"{path}: not valid repair settings: {exc}") from None

    def fit_options(self) -> dict[str, Any]:
        """The `repair_model` keywords these settings fix (device and dtype: the stitcher's, or the caller's)."""
        return {"ridge": self.ridge, "target": self.target, "objective": self.objective,
                "cosine_steps": self.cosine_steps, "strength": self.strength, "balance": self.balance,
                "max_length": self.max_length, "batch_size": self.batch_size}


def check_method(method: str | None) -> str | None:
    if method is not None and method not in REPAIR_METHODS:
        raise ConfigError(f"unknown repair method {method!r}; use one of {', '.join(REPAIR_METHODS)}")
    return method


def texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


def portable_spec(spec: str) -> str:
    """A task spec that loads in a fresh process: a registered file task becomes its search file."""
    from gptailor_merge.scoring.tasks import TASKS, FileTaskLoader

    if spec in TASKS:
        loader = TASKS.get(spec)
        if isinstance(loader, FileTaskLoader):
            return str(loader.search_path)
    return str(spec)


def settings_for(specs: Sequence[str], *, seed: int, **fields: Any) -> RepairSettings:
    """Settings over the tasks among `specs` that `sources` calibrates on (with `text`, the
    perplexity tasks; other tasks are dropped)."""
    from gptailor_merge.scoring import load_task

    sources = fields.get("sources") or SOURCES
    kept, names = [], []
    for spec in specs:
        task = load_task(spec, seed=seed)
        if task.kind == "perplexity" or sources == "all":
            kept.append(portable_spec(str(spec)))
            names.append(task.name)
    if not kept:
        raise ConfigError(f"none of the tasks {', '.join(map(str, specs))} is a text (perplexity) task to "
                          "calibrate the repair on; pass --calibration TASK (a JSONL file of {\"text\": ...} lines)")
    return RepairSettings(tasks=tuple(kept), task_names=tuple(names), seed=seed, **fields)


def settings_for_recipe(recipe_path: str | os.PathLike, specs: Sequence[str], **fields: Any) -> RepairSettings:
    """Settings for repairing a recipe's model: its dtype, and demo task names resolve."""
    from gptailor_merge.family.family import resolve_model_path
    from gptailor_merge.materialize.recipe import Recipe

    recipe = Recipe.load(recipe_path)
    base = recipe.data.get("base_model")
    if base:
        register_demo_tasks(resolve_model_path(str(base)))
    return settings_for(specs, seed=fields.pop("seed", 0), dtype=recipe.data.get("dtype") or "float32", **fields)


def calibration_groups(settings: RepairSettings) -> list[int] | None:
    """Each calibration text's task index where the settings balance tasks by tokens (else None)."""
    from gptailor_merge.scoring import load_task

    if settings.balance != "tokens":
        return None
    tasks = [load_task(spec, seed=settings.seed) for spec in settings.tasks]
    return repair_groups(tasks, settings.n_examples_per_task, settings.sources)


def calibration_for(settings: RepairSettings) -> list[str]:
    """The settings' calibration texts; checks them against the recorded digest, if any."""
    from gptailor_merge.scoring import load_task

    tasks = [load_task(spec, seed=settings.seed) for spec in settings.tasks]
    texts = repair_texts(tasks, settings.n_examples_per_task, settings.sources)
    if settings.texts_sha256 is not None and texts_digest(texts) != settings.texts_sha256:
        raise RepairError(
            f"the calibration tasks {', '.join(settings.tasks)} no longer give the texts the repair was "
            "fitted on (their digest differs); restore those files, or drop texts_sha256 from the settings "
            "to fit on the current ones"
        )
    return texts


def register_demo_tasks(base_path: Path) -> None:
    """A demo family's tasks (e.g. ppl_prose) resolve by name when the base is one of its members."""
    from gptailor_merge.demo.layout import MARKER
    from gptailor_merge.scoring import register_task_dir

    root = Path(base_path).parent
    if (root / MARKER).is_file():
        register_task_dir(root, replace=True)


# ---- writing ------------------------------------------------------------------------------------
def save_repaired(model: Any, base_path: Path, recipe: Any, info: RepairInfo, settings: RepairSettings,
                  out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write model + tokenizer + recipe + repair.safetensors + repair.json atomically."""
    from safetensors.torch import save_file

    with staged_folder(out_dir, overwrite=overwrite) as stage:
        tmp = stage.tmp
        model.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer(Path(base_path), tmp)
        note = {"method": settings.method, "note": NOTE, "maps": MAPS_FILE, "settings": SETTINGS_FILE}
        (tmp / RECIPE_FILE).write_text(recipe.with_metadata(repair=note).text)
        maps = {f"layer.{i}": t.contiguous() for i, t in sorted(info.maps.items())}
        # one metadata key: safetensors writes several in no fixed order, and the file must be bitwise stable
        meta = json.dumps({"method": settings.method, "target": info.target}, sort_keys=True)
        save_file(maps, tmp / MAPS_FILE, metadata={"gptailor_repair": meta})
        body = {"settings": settings.model_dump(mode="json"), "result": info.to_json(), "note": NOTE}
        (tmp / SETTINGS_FILE).write_text(json.dumps(body, indent=2) + "\n")
    return stage.out


CHOICE_KEYS = ("kept", "message", "repaired_vs_unrepaired", "skills")


def record_choice(folder: str | os.PathLike, choice: dict) -> None:
    """Add the validation choice (`search.selection.repair_decision`) to the folder's repair.json,
    so its model card says why the repair is there and which skills it costs. Timings are left
    out: the file stays the same for the same scores."""
    from gptailor_merge.core.atomic import write_text_atomic

    path = Path(folder) / SETTINGS_FILE
    body = json.loads(path.read_text())
    body["validation_choice"] = {k: choice[k] for k in CHOICE_KEYS if k in choice}
    write_text_atomic(path, json.dumps(body, indent=2) + "\n")


def repair_and_save(family: Any, genome: Any, recipe: Any, settings: RepairSettings,
                    out_dir: str | os.PathLike, *, texts: Sequence[str] | None = None, stitcher: Any = None,
                    tokenizer: Any = None, overwrite: bool = False) -> tuple[Path, RepairInfo]:
    """Fit the repair of `genome` with `settings` and write the repaired folder."""
    texts = list(texts) if texts is not None else calibration_for(settings)
    model, info = repair_model(family, genome, texts, **settings.fit_options(), device=settings.device,
                               dtype=settings.dtype, stitcher=stitcher, tokenizer=tokenizer,
                               text_groups=calibration_groups(settings))
    settings = settings.model_copy(update={"n_texts": len(texts), "texts_sha256": texts_digest(texts)})
    return save_repaired(model, family.base.path, recipe, info, settings, out_dir, overwrite=overwrite), info


def repair_recipe(recipe_path: str | os.PathLike, out_dir: str | os.PathLike, settings: RepairSettings, *,
                  overwrite: bool = False) -> Path:
    """`materialize --repair linear`: the recipe's model, repaired with `settings`, as a folder."""
    from gptailor_merge.family.family import Family
    from gptailor_merge.materialize.recipe import META_KEY, Recipe, recipe_to_genome
    from gptailor_merge.materialize.stitch import Stitcher

    recipe = Recipe.load(recipe_path)
    prepare_output(out_dir, overwrite)
    refs = recipe.family_refs(None if recipe.metadata.get("n_layers") else _layers_of(recipe))
    family = Family.load(refs.base, refs.candidates)
    genome = recipe_to_genome(recipe, refs.with_layers(family.n_layers))
    dtype = recipe.data.get("dtype") or "float32"
    if dtype != settings.dtype:
        settings = settings.model_copy(update={"dtype": dtype})
    register_demo_tasks(family.base.path)
    texts = calibration_for(settings)
    stitcher = Stitcher(family, device=settings.device, dtype=dtype)
    if "repair" in recipe.metadata:  # a repaired folder's own recipe: its note is written afresh
        recipe = Recipe({**recipe.data, META_KEY: {k: v for k, v in recipe.metadata.items() if k != "repair"}})
    out, _ = repair_and_save(family, genome, recipe, settings, out_dir, texts=texts, stitcher=stitcher,
                             overwrite=overwrite)
    return out


def check_repair_output(repair: str, method: str, out: Path, repair_out: str | os.PathLike | None,
                        overwrite: bool) -> Path:
    """`prune --repair`: the method, and the repaired folder (default OUT_repaired), before any weights load."""
    check_method(repair)
    if method == "laco":
        raise ConfigError("--repair is not available for laco: its collapsed layers are not a recipe the "
                          "repair could be rebuilt from; repair another baseline, or drop --repair")
    folder = Path(repair_out) if repair_out is not None else out.with_name(f"{out.stem}_repaired")
    prepare_output(folder, overwrite)
    return folder


def repair_pruned(calib: Any, genome: Any, recipe: Any, specs: Sequence[str], config: Any,
                  n_texts: int | None, out_dir: Path, *, ridge: float | None = None,
                  overwrite: bool = False, **options: Any) -> Path:
    """`prune --repair linear`: repair the baseline's genome on the search split of its calibration
    tasks (`n_texts` per task, the repair's own count: it fits far more parameters than a baseline)."""
    ev = config.eval
    settings = settings_for(specs, seed=config.search.seed, n_examples_per_task=n_texts,
                            max_length=ev.max_length, batch_size=ev.batch_size, dtype=ev.dtype, device=ev.device,
                            ridge=DEFAULT_RIDGE if ridge is None else ridge, **options)
    folder, _ = repair_and_save(calib.family, genome, recipe, settings, out_dir, stitcher=calib.stitcher,
                                tokenizer=calib.tokenizer, overwrite=overwrite)
    return folder


def _layers_of(recipe: Any) -> int:
    from gptailor_merge.materialize.mergekit_backend import _layers_of as layers_of

    return layers_of(recipe)


def card_section(folder: Path) -> list[str]:
    """Model-card lines for a repaired folder (empty when `folder` holds no repair.json)."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return []
    body = json.loads(path.read_text())
    s, result = body.get("settings", {}), body.get("result", {})
    runs = result.get("runs", [])
    what = ("examples (texts; multiple-choice contexts with their gold continuation)"
            if s.get("sources") == "all" else "texts")
    objective = ("least squares" if s.get("objective", "lstsq") == "lstsq" else
                 f"cosine distance ({s.get('cosine_steps')} L-BFGS steps from the least-squares map)")
    lines = ["## Repair of the cuts", "",
             f"{NOTE}", "",
             f"Calibration: the first {s.get('n_examples_per_task')} search-split {what} of each of "
             f"{', '.join(s.get('task_names') or s.get('tasks', []))} ({s.get('n_texts')} sequences, at most "
             f"{s.get('max_length')} tokens each; sha256 of the sequences `{s.get('texts_sha256')}`), ridge "
             f"{s.get('ridge')}, objective {objective}, strength {s.get('strength', 1.0):g} (each map I + strength "
             f"(T - I)), fitted on {s.get('device')} against "
             f"{TARGET_WORDS.get(s.get('target', 'base'), s.get('target'))}.", ""]
    if runs:
        lines += ["| removed layers | map fused into layer | calibration tokens | relative error unrepaired | "
                  "repaired |", "|---|---|---|---|---|"]
        lines += [f"| {r['removed']} | {r['layer']} | {r['n_tokens']} | {r['error_unrepaired']:.4f} | "
                  f"{r['error_repaired']:.4f} |" for r in runs]
        lines.append("")
    skipped = result.get("skipped_runs_at_layer_0") or []
    if skipped:
        lines += [f"Left unrepaired (no kept layer before them): {skipped}.", ""]
    choice = body.get("validation_choice")
    if choice:
        lines += [f"Chosen on validation: {choice.get('message')}"
                  + ("." if choice.get("kept") else " (this folder was written anyway, `--keep-repair`)."), ""]
    return lines
