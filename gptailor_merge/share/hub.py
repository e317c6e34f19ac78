"""Share a tailored model on the Hugging Face Hub: the upload folder, its model card, the push.

Takes a run folder (best.yaml + summary.json), a recipe, or a model folder; builds the folder to
upload (model files, `mergekit_config.yml`, README.md card, layer-map PNG) and uploads it with
`huggingface_hub`. Checks repo id, token and source before any merge work; never prints, logs or
writes the token.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gptailor_merge.core.errors import ConfigError, GptailorError, HubError, ModelNotFoundError
from gptailor_merge.core.genome import Genome
from gptailor_merge.core.outputs import (
    MARKER,
    commit_folder,
    local_reads,
    prepare_output,
    temp_sibling,
)
from gptailor_merge.family.family import TOKENIZER_FILES
from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit
from gptailor_merge.materialize.recipe import FamilyRefs, Recipe, recipe_to_genome

logger = logging.getLogger(__name__)

CARD_TAGS = ("merge", "mergekit", "pruned", "gptailor")
RECIPE_FILE = "mergekit_config.yml"
LAYER_MAP_FILE = "layer_map.png"
PAPER_URL = "https://arxiv.org/abs/2506.20480"
# remote files a new upload replaces, so a push with fewer shards leaves no stale ones behind
STALE_PATTERNS = ["*.safetensors", "model.safetensors.index.json", "*.bin", "pytorch_model.bin.index.json"]


# ---- cheap checks (before any work) ---------------------------------------------------------
def check_repo_id(repo_id: str) -> str:
    """`namespace/name` or `name` as the Hub accepts it; a typed error otherwise."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as exc:  # HFValidationError
        raise HubError(
            f"'{repo_id}' is not a valid Hugging Face repo id ({exc}). Use 'your-name/model-name': letters, "
            "digits, '-', '_' and '.', at most 96 characters."
        ) from None
    return repo_id


def resolve_token(token: str | None) -> str:
    """The token from the argument, `HF_TOKEN`, or the cached `hf auth login` (in that order)."""
    import huggingface_hub

    found = token or os.environ.get("HF_TOKEN") or huggingface_hub.get_token()
    if not found:
        raise HubError(
            "no Hugging Face token: pass --token, set HF_TOKEN, or log in once with `hf auth login`. "
            "`--dry-run OUT_DIR` writes the folder without uploading and needs no token."
        )
    return found


def check_hub_access(api: Any, token: str) -> None:
    """Before any merge work: the Hub answers and accepts the token (`whoami`)."""
    whoami = getattr(api, "whoami", None)
    if whoami is None:  # a stand-in without it (tests)
        return
    try:
        whoami(token=token)
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(f"the Hugging Face Hub rejected the token (HTTP {status}); create a write token at "
                           "https://huggingface.co/settings/tokens and pass it with HF_TOKEN") from None
        raise HubError(f"the Hugging Face Hub did not answer ({type(exc).__name__}); check the network and "
                       "retry, or write the folder only with --dry-run OUT_DIR") from None


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("", "0", "false", "no")
    return bool(constants.is_offline_mode() or flag)


# ---- the source -------------------------------------------------------------------------------
@dataclass
class ShareSource:
    """What to share: `kind` run | recipe | model, with whatever the card can use."""

    kind: str
    path: Path
    recipe: Recipe | None = None
    summary: dict | None = None
    run_config: dict | None = None
    extra: dict = field(default_factory=dict)


def resolve_source(source: str | os.PathLike) -> ShareSource:
    """Classify `source` and read its small files (recipe, summary, config); no weights."""
    path = Path(source)
    if path.is_dir() and (path / "config.yaml").is_file() and (path / "journal.jsonl").is_file():
        if not (path / "best.yaml").is_file():
            raise ConfigError(f"run folder '{path}' has no best.yaml yet; let `optimize` finish (or resume it) first")
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else None
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        return ShareSource("run", path, Recipe.load(path / "best.yaml"), summary, config)
    if path.is_dir() and (path / "config.json").is_file():
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ModelNotFoundError(f"model folder '{path}' has no weights (*.safetensors)", model=str(path))
        recipe = Recipe.load(path / RECIPE_FILE) if (path / RECIPE_FILE).is_file() else None
        return ShareSource("model", path, recipe)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return ShareSource("recipe", path, Recipe.load(path))
    raise ConfigError(
        f"'{path}' is neither a run folder (config.yaml + journal.jsonl), a model folder (config.json) nor a "
        "recipe (.yaml); pass one of those"
    )


@dataclass
class FamilyFacts:
    """What the card says about the family: refs, names, the genome, sizes, the base's license."""

    refs: FamilyRefs | None
    genome: Genome | None
    names: list[str]
    params_before: int | None
    license: dict


def family_facts(recipe: Recipe | None, require_models: bool) -> FamilyFacts:
    """Load the family's configs and tensor headers (cheap); `require_models` makes absence an error."""
    from gptailor_merge.family.family import Family
    from gptailor_merge.share.report import family_names

    if recipe is None:
        return FamilyFacts(None, None, [], None, {})
    try:
        refs = _family_refs(recipe)
    except GptailorError:
        if require_models:
            raise
        return FamilyFacts(None, None, [], None, {})
    family = None
    try:
        family = Family.load(refs.base, refs.candidates)
    except GptailorError:
        if require_models:
            raise
        logger.info("family models are not available here; the card omits the dense parameter count")
    genome = recipe_to_genome(recipe, refs)
    names = family_names(genome.n_candidates, refs.names or (family and [m.name for m in family.members]))
    before = family.total_params if family is not None else None
    base_path = family.base.path if family is not None else None
    return FamilyFacts(refs, genome, names, before, base_license(refs.base, base_path))


def _family_refs(recipe: Recipe) -> FamilyRefs:
    """The recipe's family; a hand-written recipe (no `gptailor:` block) gets its layer count from the base."""
    if recipe.metadata.get("n_layers"):
        return recipe.family_refs()
    from gptailor_merge.family.family import load_model_config, resolve_model_path

    base = str(recipe.data.get("base_model") or "")
    if not base:
        return recipe.family_refs()  # raises the recipe's own "no base_model" error
    return recipe.family_refs(int(load_model_config(resolve_model_path(base)).num_hidden_layers))


def base_license(base_ref: str, base_path: Path | None) -> dict:
    """`license` (and `license_name` / `license_link` for 'other') from the base's card or config."""
    readmes = [base_path / "README.md"] if base_path is not None else []
    if not Path(base_ref).exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(base_ref, "README.md")
            if isinstance(cached, str):
                readmes.append(Path(cached))
        except Exception:  # not a Hub id, no cache: no license to report
            pass
    for readme in readmes:
        if not readme.is_file():
            continue
        text = readme.read_text(errors="replace")
        if text.startswith("---"):
            try:
                meta = yaml.safe_load(text.split("---", 2)[1]) or {}
            except yaml.YAMLError:
                continue
            if isinstance(meta, dict) and isinstance(meta.get("license"), str):
                return {k: meta[k] for k in ("license", "license_name", "license_link") if isinstance(meta.get(k), str)}
    config = (base_path / "config.json") if base_path is not None else None
    if config is not None and config.is_file():
        value = json.loads(config.read_text()).get("license")
        if isinstance(value, str):
            return {"license": value}
    return {}


def safetensors_param_count(folder: str | os.PathLike) -> int | None:
    """Parameters in a folder's *.safetensors files, from their headers (no tensor is read)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


# ---- public names (no local paths leave the machine) ------------------------------------------
def public_names(refs: FamilyRefs | None, names: list[str], model_ids: dict[str, str]) -> dict[str, str]:
    """Local family references -> what the card and published recipe show: the `--model-id` Hub id
    given for that member's name, else the name. Hub ids stay as they are unless mapped."""
    if refs is None:
        if model_ids:
            raise HubError("--model-id needs a recipe that names the family; this source has none")
        return {}
    members = [refs.base, *refs.candidates]
    unknown = sorted(set(model_ids) - set(names))
    if unknown:
        raise HubError(f"--model-id names {unknown}, which are not family members; use one of {names} "
                       "(NAME=ORG/REPO)")
    for value in model_ids.values():
        check_repo_id(value)
    out = {}
    for name, ref in zip(names, members):
        if name in model_ids:
            out[ref] = model_ids[name]
        elif ref not in hub_model_ids(refs):
            out[ref] = name
    return out


def scrub_paths(data: Any, mapping: dict[str, str]) -> Any:
    """`data` with mapped references replaced and any other absolute local path cut to its name."""
    if isinstance(data, dict):
        return {k: scrub_paths(v, mapping) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [scrub_paths(v, mapping) for v in data]
    if isinstance(data, str):
        if data in mapping:
            return mapping[data]
        if os.path.isabs(data) or data.startswith("~"):
            return Path(data).name
    return data


def public_source(source: ShareSource, facts: FamilyFacts, mapping: dict[str, str]) -> tuple[ShareSource, FamilyFacts]:
    """The source and facts as the card shows them: references through `mapping`, no local paths."""
    recipe = Recipe(scrub_paths(source.recipe.data, mapping)) if source.recipe is not None else None
    config = scrub_paths(source.run_config, mapping) if source.run_config else source.run_config
    refs = facts.refs
    if refs is not None:
        refs = FamilyRefs(mapping.get(refs.base, refs.base), tuple(mapping.get(c, c) for c in refs.candidates),
                          refs.n_layers, refs.names)
    return (ShareSource(source.kind, source.path, recipe, source.summary, config, source.extra),
            FamilyFacts(refs, facts.genome, facts.names, facts.params_before, facts.license))


# ---- the card -----------------------------------------------------------------------------------
def hub_model_ids(refs: FamilyRefs | None) -> list[str]:
    """The family's models that are Hub ids (local folders cannot be `base_model` entries)."""
    from huggingface_hub.utils import validate_repo_id

    out = []
    for ref in ([refs.base, *refs.candidates] if refs else []):
        try:
            validate_repo_id(ref)
        except ValueError:
            continue
        if "/" in ref and not Path(ref).exists():
            out.append(ref)
    return out


def _cell(metrics: dict) -> str:
    return f"{metrics['acc']:.3f}" if "acc" in metrics else f"{metrics.get('ppl', float('nan')):.2f}"


def results_table(summary: dict) -> str:
    """Held-out table: the dense family members and this model (from summary.json rows)."""
    from gptailor_merge.scoring.intervals import interval_text

    rows = [r for r in summary.get("rows", [])
            if r["kind"] in ("member", "dense") or r["model"] == "gptailor-best"
            or r["model"].startswith("best-baseline")]
    if not rows:
        return ""
    tasks = list(rows[0]["tasks"])
    n_per_task = summary.get("heldout_n_per_task", {})
    heads = [f"{t} ({'acc ↑' if 'acc' in rows[0]['tasks'][t] else 'ppl ↓'}"
             f"{', n=' + str(n_per_task[t]) if t in n_per_task else ''})" for t in tasks]
    head = ["model", "layers", "params", *heads, "retention_sym", "worst task",
            "vs best member (95% CI)", "vs best baseline (95% CI)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        name = ("**this model**" if r["model"] == "gptailor-best" else
                f"{r['model']} (single-model pruning of the base)" if r["kind"] == "tailored" else
                f"{r['model']} (family member)")
        worst = r.get("worst_task")
        lines.append("| " + " | ".join([name, str(r["layers"]), f"{r['params']:,}",
                                         *(_cell(r["tasks"][t]) for t in tasks),
                                         fmt(r.get("retention_sym")),
                                         f"{worst['task']} {worst['ratio']:.3f}" if worst else "—",
                                         interval_text(r.get("vs_best_member")),
                                         interval_text(r.get("vs_best_baseline"))]) + " |")
    selection = summary.get("selection")
    if selection:
        lines += ["", f"How this model was chosen: {selection['message']} (validation split, "
                      f"disjoint from the search and held-out examples)."]
    return "\n".join(lines)


def _reproduce_config(source: ShareSource, facts: FamilyFacts) -> str:
    """The run config to reproduce the search (the run's own, else one for this family and target)."""
    if source.run_config:
        config = {k: v for k, v in source.run_config.items() if k != "out_dir"}
    else:
        refs, genome = facts.refs, facts.genome
        config = {"family": {"base": refs.base if refs else "BASE", "candidates": list(refs.candidates) if refs else []},
                  "target": {"layers": genome.n_kept if genome else 0}}
        if refs and refs.names:
            config["family"]["names"] = list(refs.names)
    return yaml.safe_dump(config, sort_keys=False)


def build_model_card(repo_id: str, source: ShareSource, facts: FamilyFacts, params_after: int | None):
    """A `huggingface_hub.ModelCard`: Hub metadata front matter plus the plain-language body."""
    from huggingface_hub import ModelCard, ModelCardData

    from gptailor_merge.share.report import layer_map_markdown

    base_models = hub_model_ids(facts.refs)
    data = ModelCardData(
        base_model=base_models or None,
        base_model_relation="merge" if base_models else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=list(CARD_TAGS),
        **facts.license,
    )
    g, refs, names = facts.genome, facts.refs, facts.names
    title = repo_id.split("/")[-1]
    body = [f"# {title}", ""]
    if g is not None and refs is not None:
        cut = len(g.removed)
        body += [
            f"A layer-pruned language model: **{g.n_kept} of {g.n_layers} decoder layers kept** ({cut} removed, "
            f"{100 * cut / g.n_layers:.0f}% fewer layers). It was made with gptailor-merge, which cuts and stitches "
            f"layers across a family of fine-tunes of one base model ([GPTailor]({PAPER_URL})): every kept layer is "
            "the base's own, one fine-tune's, or a merge of several fine-tunes' layers. Embeddings, final norm "
            "and LM head are the base's.",
            "",
        ]
    else:
        body += ["A model folder shared with gptailor-merge (no recipe was found, so the layer map is unknown).", ""]
    if params_after is not None and facts.params_before:
        saved = 1 - params_after / facts.params_before
        body += [f"**Parameters:** {facts.params_before:,} in the dense base → {params_after:,} here "
                 f"({100 * saved:.1f}% fewer).", ""]
    elif params_after is not None:
        body += [f"**Parameters:** {params_after:,}.", ""]
    if refs is not None:
        body += ["## The family", "", "| role | name | model |", "|---|---|---|",
                 f"| base | {names[0]} | `{refs.base}` |"]
        body += [f"| fine-tune {j} | {names[j + 1]} | `{m}` |" for j, m in enumerate(refs.candidates)]
        body.append("")
        if len(base_models) < 1 + len(refs.candidates):
            body += ["Some family members were local models and appear by their family names; replace those "
                     "names in `mergekit_config.yml` with your copies to re-run the recipe.", ""]
    if g is not None:
        body += ["## Layer map", "", f"![layer map]({LAYER_MAP_FILE})", "", layer_map_markdown(g, names), ""]
    from gptailor_merge.repair.folder import card_section

    repair_lines = card_section(source.path) if source.kind == "model" else []
    body += repair_lines
    body += ["## Results", ""]
    if source.summary and results_table(source.summary):
        n = source.summary.get("heldout_examples")
        scope = "the whole held-out split of each task" if n is None else f"{n} held-out examples per task"
        body += [f"Scored on examples the search never saw ({scope}). Multiple-choice "
                 "tasks show accuracy, perplexity tasks perplexity. `retention_sym` is exp(mean log ratio) against "
                 "the dense base: log(ppl_base / ppl) per perplexity task, log((acc - chance) / (acc_base - "
                 "chance)) per multiple-choice task on which the base beats chance; 1.0 = as good as the base. "
                 "The last column is the difference in mean log ratio to the best family member with a paired "
                 "bootstrap 95% interval over held-out examples.", "",
                 results_table(source.summary), ""]
    else:
        scores = (source.recipe.metadata.get("search_scores") if source.recipe else None) or {}
        if "retention" in scores:
            body += [f"No held-out evaluation is attached. On the search split this recipe's symmetric "
                     f"retention against the dense base was {scores['retention']:.3f} "
                     f"({scores.get('n_examples')} examples per task).", ""]
        else:
            body += ["No evaluation is attached; score it with `python -m gptailor_merge evaluate MODEL_DIR`.", ""]
    body += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
             f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```", ""]
    if source.recipe is not None:
        body += ["## Reproduce", "",
                 f"The recipe is `{RECIPE_FILE}` in this repository; stock mergekit rebuilds the "
                 f"{'unrepaired weights (the repair above is not part of it)' if repair_lines else 'weights'}:", "",
                 "```bash", "pip install mergekit==0.1.5", f"mergekit-yaml {RECIPE_FILE} out/", "```", "",
                 "The search that found it (gptailor-merge), with the config below saved as `config.yaml`:", "",
                 "```bash", "python -m gptailor_merge optimize --config config.yaml", "```", "",
                 "```yaml", _reproduce_config(source, facts).rstrip(), "```", "",
                 f"<details><summary>{RECIPE_FILE}</summary>", "", "```yaml", source.recipe.text.rstrip(), "```", "",
                 "</details>", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


# ---- folder and push ------------------------------------------------------------------------------
MODEL_FILES = ("config.json", "model.safetensors.index.json", "added_tokens.json", RECIPE_FILE, *TOKENIZER_FILES)


def is_model_file(name: str) -> bool:
    """What push uploads from a model folder: config, weights, tokenizer files, the recipe."""
    return name in MODEL_FILES or name.endswith(".safetensors")


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    """Hard-link (else copy) the model files of `src` (top level only) into `dst`: big shards are
    not duplicated. Other files are left out; a model file that is a link leaving `src` is an error."""
    root = src.resolve()
    skipped = []
    for path in sorted(src.iterdir()):
        if not is_model_file(path.name) or not path.is_file():
            skipped.append(path.name)
            continue
        real = path.resolve()
        if root not in real.parents:
            raise HubError(f"'{path}' is a link to '{real}', outside the model folder; push uploads only files "
                           f"inside it. Replace the link by the file (cp -L) or leave it out")
        try:
            os.link(real, dst / path.name)
        except OSError:
            shutil.copy2(real, dst / path.name)
    if skipped:
        logger.info("not uploading %s (not model files)", ", ".join(skipped))


def _write_fresh(path: Path, data: str | bytes) -> None:
    """Replace `path` by a new file (never write through a hard link into the user's folder)."""
    if path.exists():
        path.unlink()
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def build_upload_folder(source: ShareSource, repo_id: str, folder: Path, facts: FamilyFacts,
                        model_ids: dict[str, str] | None = None) -> Path:
    """Model files (materialized with mergekit unless `source` is a model folder), card, layer map,
    and the recipe with local paths replaced by member names or `model_ids` Hub ids."""
    from gptailor_merge.share.report import plot_layer_map

    if source.kind == "model":
        folder.mkdir(parents=True)
        _link_or_copy_tree(source.path, folder)
    else:
        assert source.recipe is not None
        logger.info("materializing %s with mergekit", source.path)
        materialize_with_mergekit(source.recipe, folder)
    (folder / MARKER).unlink(missing_ok=True)
    source, facts = public_source(source, facts, public_names(facts.refs, facts.names, model_ids or {}))
    if source.recipe is not None:
        _write_fresh(folder / RECIPE_FILE, source.recipe.text)
    if facts.genome is not None:
        png = folder / LAYER_MAP_FILE
        if png.exists():
            png.unlink()
        plot_layer_map(facts.genome, facts.names, png)
    card = build_model_card(repo_id, source, facts, safetensors_param_count(folder))
    _write_fresh(folder / "README.md", str(card))
    return folder


def push_to_hub(
    source: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run_dir: str | os.PathLike | None = None,
    api: Any = None,
    overwrite: bool = False,
    model_ids: dict[str, str] | None = None,
) -> Path | str:
    """Build the folder for `source` and upload it to `repo_id`; with `dry_run_dir`, only write it there.

    Returns the dry-run folder, or the URL of the commit. `api` is an `HfApi` (a stand-in in tests).
    """
    check_repo_id(repo_id)
    if revision is not None and (not revision.strip() or any(c.isspace() for c in revision)):
        raise HubError(f"revision {revision!r} is not a branch name; use e.g. --revision pruned-30of40")
    dry_run = dry_run_dir is not None
    shared = resolve_source(source)
    facts = family_facts(shared.recipe, require_models=shared.kind != "model")
    public_names(facts.refs, facts.names, model_ids or {})  # a bad --model-id fails before any work
    if not dry_run:
        token = resolve_token(token)
        if api is None and _offline():
            raise HubError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push, or use "
                              "--dry-run OUT_DIR to write the folder only")
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        check_hub_access(api, token)
    if dry_run:
        reads = [shared.path, *local_reads(shared.recipe.data if shared.recipe else None)]
        out = prepare_output(dry_run_dir, overwrite, reads=reads)
        work = temp_sibling(out)
    else:
        work = Path(tempfile.mkdtemp(prefix="gptailor-push-"))
    try:
        folder = build_upload_folder(shared, repo_id, work / "upload", facts, model_ids)
        if dry_run:
            return commit_folder(folder, out)
        return _upload(api, folder, repo_id, private=private, revision=revision, token=token, facts=facts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _upload(api: Any, folder: Path, repo_id: str, *, private: bool, revision: str | None, token: str,
            facts: FamilyFacts) -> str:
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    logger.info("uploading %d files to %s (private=%s, revision=%s)",
                sum(1 for p in folder.rglob("*") if p.is_file()), repo_id, private, revision or "main")
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    repo_id = getattr(repo_url, "repo_id", None) or repo_id  # a bare name gets the user's namespace
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
    g = facts.genome
    message = (f"gptailor-merge: {g.n_kept} of {g.n_layers} layers kept (genome {g.genome_id})" if g
               else "gptailor-merge: upload model")
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, token=token,
                               commit_message=message, delete_patterns=STALE_PATTERNS)
    url = getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    logger.info("pushed to %s", url)
    return str(url)
