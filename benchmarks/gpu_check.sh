#!/usr/bin/env bash
# GPU check (issue 7): a random-weight Llama-2-7B-shaped family (base + 3 fine-tunes by small
# perturbations) built in GPU memory, 20 search trials with the stitcher (prefix reuse on), a replay
# of those trials without prefix reuse and as bare forwards (the floor), then 2 candidates through
# the mergekit backend against the stitcher; prints per-candidate times. Meant to finish in < 8 min.
#
#   bash benchmarks/gpu_check.sh                        # on one CUDA GPU (H200: ~70 GB of it)
#   GPU_CHECK_SHAPE=tiny bash benchmarks/gpu_check.sh   # the same code path on CPU, in a minute
#
# Needs torch + transformers (>= 5) preinstalled; the rest travels as wheels in $WHEELS (default
# .whl), see benchmarks/README.md. Knobs: GPU_CHECK_SHAPE (7b|tiny), GPU_CHECK_DTYPE, GPU_CHECK_TRIALS
# (20), GPU_CHECK_DEADLINE_S (430: later stages are skipped, with a message, past it),
# GPU_CHECK_DISK_CANDIDATES (2: candidates written to disk for mergekit), GPU_CHECK_TMP (scratch
# folder, needs ~55 GB free for 7b), GPU_CHECK_JSON (where to write the summary; default $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gptailor-site "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/gptailor-site"
fi
if ! "$PY" -c "import torch, transformers, mergekit, nevergrad, pydantic, immutables, yaml, tqdm" 2>/tmp/gpu_check_import.err; then
  echo "gpu_check: missing Python packages:" >&2
  tail -n 1 /tmp/gpu_check_import.err >&2
  echo "carry wheels in $WHEELS (benchmarks/README.md, 'GPU check'): mergekit nevergrad cma" \
       "bayesian-optimization directsearch pydantic pydantic-core annotated-types" \
       "typing-inspection immutables" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true

exec timeout "${GPU_CHECK_TIMEOUT_S:-470}" "$PY" - <<'PY'
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

T0 = time.perf_counter()

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from gptailor_merge.family.family import Family  # noqa: E402
from gptailor_merge.core.genome import Genome  # noqa: E402
from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit  # noqa: E402
from gptailor_merge.materialize.prefix import PrefixReuse  # noqa: E402
from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe  # noqa: E402
from gptailor_merge.scoring import evaluate_model  # noqa: E402
from gptailor_merge.search.loop import run_search  # noqa: E402
from gptailor_merge.search.space import SearchSpace, paper_seeds  # noqa: E402
from gptailor_merge.materialize.stitch import Stitcher  # noqa: E402
from gptailor_merge.demo.synthetic import build_memory_family, tiny_tokenizer, write_member  # noqa: E402
from gptailor_merge.bench.environment import git_sha, hardware  # noqa: E402
from gptailor_merge.bench.speed import (FloorVariant, RecordingEvaluator, StitchVariant,  # noqa: E402
                                        sync, time_variants, write_tasks)

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {message}", flush=True)


def left() -> float:
    return DEADLINE - (time.perf_counter() - T0)


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
               max_position_embeddings=4096, rms_norm_eps=1e-5),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=320, max_position_embeddings=512,
                 rms_norm_eps=1e-5),
}
shape = os.environ.get("GPU_CHECK_SHAPE", "7b")
if shape not in SHAPES:
    sys.exit(f"GPU_CHECK_SHAPE={shape!r}: use one of {', '.join(SHAPES)}")
cuda = torch.cuda.is_available()
if shape == "7b" and not cuda:
    sys.exit("GPU_CHECK_SHAPE=7b needs a CUDA GPU; GPU_CHECK_SHAPE=tiny runs the same path on CPU")
DEADLINE = float(os.environ.get("GPU_CHECK_DEADLINE_S", 430))
device = "cuda" if cuda else "cpu"
dtype_name = os.environ.get("GPU_CHECK_DTYPE", "bfloat16" if cuda else "float32")
dtype = getattr(torch, dtype_name)
n_trials = int(os.environ.get("GPU_CHECK_TRIALS", 20))
big = shape == "7b"
rungs = [10, 30, 90] if big else [3, 9, 27]
args = SimpleNamespace(device=device, dtype=dtype_name, batch_size=16, max_length=256, rungs=rungs)
summary: dict = {"benchmark": "gpu_check", "shape": shape, "dtype": dtype_name, "git": git_sha(),
                 "hardware": hardware(), "seed": 0, "rungs": rungs}
log(f"{summary['hardware']}")

# ---- the family, in memory -------------------------------------------------------------------
config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
                     pad_token_id=2)
family, model = build_memory_family(config, n_candidates=3, seed=0, device=device, dtype=dtype)
L = family.n_layers
n_keep = L - round(L * 0.25)
if cuda:
    log(f"family built in memory: {L} layers, GPU memory {gib(torch.cuda.memory_allocated())}")
else:
    log(f"family built in memory: {L} layers")
tokenizer = tiny_tokenizer()
work = Path(tempfile.mkdtemp(prefix="gptailor-gpu-check-", dir=os.environ.get("GPU_CHECK_TMP")))
tasks = write_tasks(work / "tasks", seed=0, n_choice=2 * rungs[-1] + 10, n_text=2 * rungs[-1] + 10,
                    context_words=(10, 40), text_words=(30, 120))

# ---- 20 search trials, stitcher + prefix reuse -------------------------------------------------
stitcher = Stitcher(family, device=device, dtype=dtype, cache_size=64 if big else 256, model=model)
evaluator = RecordingEvaluator(stitcher, tokenizer, tasks, batch_size=args.batch_size,
                               max_length=args.max_length, rungs=rungs,
                               prefix_cache_bytes=(8 << 30) if big else (64 << 20))
space = SearchSpace(L, 3, n_keep)


def on_trial(trial) -> None:
    per_rung = ", ".join(f"n={r.n_examples}: {r.seconds:.2f}s" for r in trial.rungs)
    print(f"  trial {trial.index:2d} {trial.status:6s} fidelity {trial.fidelity:3d} "
          f"{trial.seconds:7.2f}s ({per_rung}) retention {trial.retention:.3f}", flush=True)


log(f"search: {n_trials} trials, keep {n_keep} of {L} layers, rungs {rungs} "
    "(a rung's first trial also scores the dense reference)")
start = time.perf_counter()
result = run_search(space, evaluator, work / "run", optimizer="DiscreteLenglerOnePlusOne",
                    n_trials=n_trials, rungs=rungs, seed=0, progress=False, on_trial=on_trial)
search_s = time.perf_counter() - start
stats = evaluator.prefix.stats.as_dict()
summary["search"] = {"trials": len(result.trials), "seconds": search_s,
                     "trial_seconds": [t.seconds for t in result.trials],
                     "score_calls": len(evaluator.calls), "prefix": stats,
                     "layers_built": stitcher.stats["built"]}
if cuda:
    summary["search"]["max_gpu_memory"] = torch.cuda.max_memory_allocated()
log(f"search done in {search_s:.1f}s; prefix reuse skipped {stats['skip_fraction']:.3f} of layer "
    f"passes; {stitcher.stats['built']} layers built"
    + (f"; peak GPU memory {gib(torch.cuda.max_memory_allocated())}" if cuda else ""))

# ---- prefix reuse equals the plain model on this device ----------------------------------------
first, second = evaluator.calls[0].genome, evaluator.calls[-1].genome
ids = torch.randint(3, 300, (4, 64), generator=torch.Generator().manual_seed(0)).to(device)
mask = torch.ones_like(ids)
mask[1, 40:] = 0
reuse = PrefixReuse()  # DEFAULT_PREFIX_CACHE_BYTES
equal, worst = True, 0.0
for genome in (first, second, first):
    built = stitcher.build(genome)
    with torch.inference_mode():
        want = built(input_ids=ids, attention_mask=mask, use_cache=False).logits
    got = reuse.wrap(built, genome)(input_ids=ids, attention_mask=mask).logits
    equal &= bool(torch.equal(want, got))
    worst = max(worst, (want.float() - got.float()).abs().max().item())
summary["prefix_equal"] = {"torch_equal": equal, "max_abs_diff": worst}
log(f"prefix reuse vs plain logits on {device}/{dtype_name}: torch.equal={equal}, max |diff|={worst:.3g}")

# ---- replay: the same calls without prefix reuse, and as bare forwards ------------------------
variants: dict = {}
if left() > 2.5 * search_s + 60:
    variants = {"stitch": StitchVariant(family, tokenizer, tasks, args, 0, stitcher=stitcher),
                "stitch_prefix": StitchVariant(family, tokenizer, tasks, args,
                                               (8 << 30) if big else (64 << 20), stitcher=stitcher),
                "floor": FloorVariant(family, tokenizer, tasks, args, stitcher=stitcher)}
    times = time_variants(variants, evaluator.calls, set())
    print(f"  {'call':>4} {'n':>3} {'stitch':>8} {'+prefix':>8} {'floor':>8}")
    for i, call in enumerate(evaluator.calls):
        print(f"  {i:>4} {call.n_examples:>3} {times['stitch'][i]:>7.3f}s "
              f"{times['stitch_prefix'][i]:>7.3f}s {times['floor'][i]:>7.3f}s")
    summary["replay"] = {"n_examples": [c.n_examples for c in evaluator.calls], "seconds": times}
    for n in rungs:
        idx = [i for i, c in enumerate(evaluator.calls) if c.n_examples == n]
        if idx:
            med = {k: sorted(times[k][i] for i in idx)[len(idx) // 2] for k in times}
            log(f"rung {n}: median stitch {med['stitch']:.3f}s, +prefix {med['stitch_prefix']:.3f}s, "
                f"floor {med['floor']:.3f}s ({len(idx)} calls; layers already built)")
else:
    log("replay skipped: not enough time left before GPU_CHECK_DEADLINE_S")

# ---- 2 candidates through mergekit, against the stitcher ---------------------------------------
stitcher.build(Genome.base_only(L, 3))  # the base's own layers back in place for the next Stitcher
del evaluator, variants
stitcher.clear_cache()
if cuda:
    torch.cuda.empty_cache()
k_disk = int(os.environ.get("GPU_CHECK_DISK_CANDIDATES", 2))
member_bytes = sum(t.numel() * t.element_size() for t in family.base.tensors.values())
free = shutil.disk_usage(work).free
while k_disk > 0 and free < (k_disk + 1.8) * member_bytes:
    k_disk -= 1
mergekit_rows = []
if k_disk == 0:
    log(f"mergekit skipped: {gib(free)} free in {work}, each member is {gib(member_bytes)}")
elif left() < 90:
    log("mergekit skipped: not enough time left before GPU_CHECK_DEADLINE_S")
else:
    disk = work / "disk"
    t = time.perf_counter()
    write_member(family, 0, disk / "base", tokenizer)
    per_member = time.perf_counter() - t
    log(f"base written in {per_member:.1f}s ({gib(member_bytes)})")
    while k_disk > 1 and left() < per_member * k_disk + 240:
        k_disk -= 1
    for j in range(k_disk):
        write_member(family, j + 1, disk / f"cand{j}", tokenizer)
    disk_family = Family.load(disk / "base", [disk / f"cand{j}" for j in range(k_disk)])
    log(f"{k_disk} candidate(s) written; mergekit family on disk ready")
    sub = family.with_candidates(k_disk)
    sub_space = SearchSpace(L, k_disk, n_keep)
    seeds = paper_seeds(sub_space)
    merged = [g for g in seeds if g.has_merges]
    selections = [g for g in seeds if not g.has_merges and any(s.sources for s in g.layers)]
    picked = ([merged[len(merged) // 2]] if merged else []) + selections  # worst case first
    stitch2 = Stitcher(sub, device=device, dtype=dtype, cache_size=2 * L, model=model)
    n = rungs[0]
    for genome in picked[:2]:
        if mergekit_rows and left() < 1.3 * mergekit_rows[-1]["mergekit_s"]:
            log("second mergekit candidate skipped: not enough time left")
            break
        out = work / "merged"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        recipe = genome_to_recipe(genome, FamilyRefs.of(disk_family), dtype=dtype_name)
        folder = materialize_with_mergekit(recipe, out, device=device, overwrite=True)
        t1 = time.perf_counter()
        merged_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        sync(torch.device(device))
        t2 = time.perf_counter()
        a = evaluate_model(merged_model, tokenizer, tasks, split="search", n_examples=n,
                           batch_size=args.batch_size, max_length=args.max_length)
        t3 = time.perf_counter()
        del merged_model
        if cuda:
            torch.cuda.empty_cache()
        t4 = time.perf_counter()
        built = stitch2.build(genome)
        b = evaluate_model(built, tokenizer, tasks, split="search", n_examples=n,
                           batch_size=args.batch_size, max_length=args.max_length)
        t5 = time.perf_counter()
        diff = max(abs(a.tasks[k].metrics[m] - b.tasks[k].metrics[m])
                   for k in a.tasks for m in a.tasks[k].metrics)
        row = {"genome": genome.describe()[:4], "merges": genome.has_merges, "n_examples": n,
               "mergekit_s": t3 - t0, "merge_s": t1 - t0, "load_s": t2 - t1, "score_s": t3 - t2,
               "stitch_s": t5 - t4, "max_metric_diff": diff}
        mergekit_rows.append(row)
        log(f"mergekit candidate ({'merged' if genome.has_merges else 'passthrough'}, n={n}): "
            f"{row['mergekit_s']:.1f}s (merge {row['merge_s']:.1f} + load {row['load_s']:.1f} + "
            f"score {row['score_s']:.2f}) vs stitcher {row['stitch_s']:.2f}s, "
            f"ratio {row['mergekit_s'] / row['stitch_s']:.0f}x, max metric diff {diff:.3g}")
summary["mergekit"] = {"disk_candidates": k_disk, "rows": mergekit_rows}
shutil.rmtree(work, ignore_errors=True)

summary["seconds"] = time.perf_counter() - T0
target = os.environ.get("GPU_CHECK_JSON") or (os.path.join(os.environ["OUT"], "gpu_check.json")
                                              if os.environ.get("OUT") else None)
if target:
    Path(target).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    log(f"wrote {target}")
log("gpu check done")
PY
