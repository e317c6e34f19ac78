"""GPU check: a Llama-2-7B-shaped random family in GPU memory, searched, replayed and merged by mergekit.

A random-weight family (base + 3 fine-tunes by small perturbations) built on the device; 20 search
trials with the stitcher (prefix reuse on); prefix reuse against plain logits; a replay of those
trials without prefix reuse and as bare forwards (the floor); then up to 2 candidates through the
mergekit backend against the stitcher. Prints per-candidate times; meant to finish in < 8 minutes.
`--shape tiny` runs the same code path on CPU in about a minute. Knobs also read from the
environment (`GPU_CHECK_*`) so `benchmarks/gpu_check.sh` can carry them to a lent machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
               max_position_embeddings=4096, rms_norm_eps=1e-5),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=320, max_position_embeddings=512,
                 rms_norm_eps=1e-5),
}


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


@dataclass
class Clock:
    """Seconds since the start, and how many are left before the deadline (later stages skip)."""

    deadline: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.deadline - self.elapsed()

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)


@dataclass
class Setup:
    """What every stage shares: the family on the device, its tokenizer, tasks and settings."""

    family: object
    model: object
    tokenizer: object
    tasks: list
    work: Path
    device: str
    dtype: torch.dtype
    dtype_name: str
    big: bool
    rungs: list[int]
    n_keep: int
    clock: Clock

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def prefix_bytes(self) -> int:
        return (8 << 30) if self.big else (64 << 20)

    @property
    def score_args(self) -> SimpleNamespace:
        return SimpleNamespace(device=self.device, dtype=self.dtype_name, batch_size=16,
                               max_length=256, rungs=self.rungs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default=env("GPU_CHECK_SHAPE", "7b"))
    p.add_argument("--dtype", default=env("GPU_CHECK_DTYPE"),
                   help="default bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--trials", type=int, default=int(env("GPU_CHECK_TRIALS", 20)))
    p.add_argument("--deadline-s", type=float, default=float(env("GPU_CHECK_DEADLINE_S", 430)),
                   help="later stages are skipped, with a message, past it")
    p.add_argument("--disk-candidates", type=int, default=int(env("GPU_CHECK_DISK_CANDIDATES", 2)),
                   help="candidates written to disk for mergekit")
    p.add_argument("--tmp", default=env("GPU_CHECK_TMP"), help="scratch folder (~55 GB free for 7b)")
    p.add_argument("--json", type=Path, default=env("GPU_CHECK_JSON") or (
        Path(env("OUT")) / "gpu_check.json" if env("OUT") else None), help="default $OUT/gpu_check.json")
    return p.parse_args(argv)


def setup(args: argparse.Namespace, clock: Clock) -> Setup:
    """The family built in device memory, a tiny tokenizer and synthetic tasks in a scratch folder."""
    from transformers import LlamaConfig

    from gptailor_merge.bench.speed import write_tasks
    from gptailor_merge.demo.synthetic import build_memory_family, tiny_tokenizer

    cuda = torch.cuda.is_available()
    if args.shape == "7b" and not cuda:
        raise SystemExit("--shape 7b needs a CUDA GPU; --shape tiny runs the same path on CPU")
    dtype_name = args.dtype or ("bfloat16" if cuda else "float32")
    big = args.shape == "7b"
    rungs = [10, 30, 90] if big else [3, 9, 27]
    config = LlamaConfig(**SHAPES[args.shape], tie_word_embeddings=False, bos_token_id=0,
                         eos_token_id=1, pad_token_id=2)
    dtype = getattr(torch, dtype_name)
    device = "cuda" if cuda else "cpu"
    family, model = build_memory_family(config, n_candidates=3, seed=0, device=device, dtype=dtype)
    clock.log(f"family built in memory: {family.n_layers} layers"
              + (f", GPU memory {gib(torch.cuda.memory_allocated())}" if cuda else ""))
    work = Path(tempfile.mkdtemp(prefix="gptailor-gpu-check-", dir=args.tmp))
    tasks = write_tasks(work / "tasks", seed=0, n_choice=2 * rungs[-1] + 10,
                        n_text=2 * rungs[-1] + 10, context_words=(10, 40), text_words=(30, 120))
    return Setup(family, model, tiny_tokenizer(), tasks, work, device, dtype, dtype_name, big, rungs,
                 family.n_layers - round(family.n_layers * 0.25), clock)


def search_stage(s: Setup, n_trials: int, stitcher) -> tuple[dict, object]:
    """`n_trials` search trials with the stitcher and prefix reuse; (summary part, evaluator)."""
    from gptailor_merge.bench.speed import RecordingEvaluator
    from gptailor_merge.search.loop import run_search
    from gptailor_merge.search.space import SearchSpace

    evaluator = RecordingEvaluator(stitcher, s.tokenizer, s.tasks, batch_size=16, max_length=256,
                                   rungs=s.rungs, prefix_cache_bytes=s.prefix_bytes)

    def on_trial(trial) -> None:
        per_rung = ", ".join(f"n={r.n_examples}: {r.seconds:.2f}s" for r in trial.rungs)
        print(f"  trial {trial.index:2d} {trial.status:6s} fidelity {trial.fidelity:3d} "
              f"{trial.seconds:7.2f}s ({per_rung}) retention {trial.retention:.3f}", flush=True)

    s.clock.log(f"search: {n_trials} trials, keep {s.n_keep} of {s.family.n_layers} layers, rungs "
                f"{s.rungs} (a rung's first trial also scores the dense reference)")
    start = time.perf_counter()
    result = run_search(SearchSpace(s.family.n_layers, 3, s.n_keep), evaluator, s.work / "run",
                        optimizer="DiscreteLenglerOnePlusOne", n_trials=n_trials, rungs=s.rungs,
                        seed=0, progress=False, on_trial=on_trial)
    seconds = time.perf_counter() - start
    stats = evaluator.prefix.stats.as_dict()
    part = {"trials": len(result.trials), "seconds": seconds,
            "trial_seconds": [t.seconds for t in result.trials], "score_calls": len(evaluator.calls),
            "prefix": stats, "layers_built": stitcher.stats["built"]}
    if s.cuda:
        part["max_gpu_memory"] = torch.cuda.max_memory_allocated()
    s.clock.log(f"search done in {seconds:.1f}s; prefix reuse skipped {stats['skip_fraction']:.3f} of "
                f"layer passes; {stitcher.stats['built']} layers built"
                + (f"; peak GPU memory {gib(torch.cuda.max_memory_allocated())}" if s.cuda else ""))
    return part, evaluator


def prefix_equality(s: Setup, stitcher, genomes: Sequence) -> dict:
    """Prefix reuse against the plain model's logits on this device, for each genome in turn."""
    from gptailor_merge.materialize.prefix import PrefixReuse

    ids = torch.randint(3, 300, (4, 64), generator=torch.Generator().manual_seed(0)).to(s.device)
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    reuse = PrefixReuse()  # DEFAULT_PREFIX_CACHE_BYTES
    equal, worst = True, 0.0
    for genome in genomes:
        built = stitcher.build(genome)
        with torch.inference_mode():
            want = built(input_ids=ids, attention_mask=mask, use_cache=False).logits
        got = reuse.wrap(built, genome)(input_ids=ids, attention_mask=mask).logits
        equal &= bool(torch.equal(want, got))
        worst = max(worst, (want.float() - got.float()).abs().max().item())
    s.clock.log(f"prefix reuse vs plain logits on {s.device}/{s.dtype_name}: torch.equal={equal}, "
                f"max |diff|={worst:.3g}")
    return {"torch_equal": equal, "max_abs_diff": worst}


def replay_stage(s: Setup, stitcher, calls: Sequence) -> dict:
    """The search's calls again without prefix reuse, with it, and as bare forwards (the floor)."""
    from gptailor_merge.bench.speed import FloorVariant, StitchVariant, time_variants

    a = s.score_args
    variants = {"stitch": StitchVariant(s.family, s.tokenizer, s.tasks, a, 0, stitcher=stitcher),
                "stitch_prefix": StitchVariant(s.family, s.tokenizer, s.tasks, a, s.prefix_bytes,
                                               stitcher=stitcher),
                "floor": FloorVariant(s.family, s.tokenizer, s.tasks, a, stitcher=stitcher)}
    times = time_variants(variants, calls, set())
    print(f"  {'call':>4} {'n':>3} {'stitch':>8} {'+prefix':>8} {'floor':>8}")
    for i, call in enumerate(calls):
        print(f"  {i:>4} {call.n_examples:>3} {times['stitch'][i]:>7.3f}s "
              f"{times['stitch_prefix'][i]:>7.3f}s {times['floor'][i]:>7.3f}s")
    for n in s.rungs:
        idx = [i for i, c in enumerate(calls) if c.n_examples == n]
        if idx:
            med = {k: sorted(times[k][i] for i in idx)[len(idx) // 2] for k in times}
            s.clock.log(f"rung {n}: median stitch {med['stitch']:.3f}s, +prefix "
                        f"{med['stitch_prefix']:.3f}s, floor {med['floor']:.3f}s ({len(idx)} calls; "
                        "layers already built)")
    return {"n_examples": [c.n_examples for c in calls], "seconds": times}


def mergekit_candidate(s: Setup, genome, disk_family, stitch2, n: int) -> dict:
    """One candidate through mergekit to disk + from_pretrained + score, against the stitcher."""
    from transformers import AutoModelForCausalLM

    from gptailor_merge.bench.speed import sync
    from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit
    from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe
    from gptailor_merge.scoring import evaluate_model

    out = s.work / "merged"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    recipe = genome_to_recipe(genome, FamilyRefs.of(disk_family), dtype=s.dtype_name)
    folder = materialize_with_mergekit(recipe, out, device=s.device, overwrite=True)
    t1 = time.perf_counter()
    merged_model = AutoModelForCausalLM.from_pretrained(folder, dtype=s.dtype).to(s.device).eval()
    sync(torch.device(s.device))
    t2 = time.perf_counter()
    a = evaluate_model(merged_model, s.tokenizer, s.tasks, split="search", n_examples=n,
                       batch_size=16, max_length=256)
    t3 = time.perf_counter()
    del merged_model
    if s.cuda:
        torch.cuda.empty_cache()
    t4 = time.perf_counter()
    b = evaluate_model(stitch2.build(genome), s.tokenizer, s.tasks, split="search", n_examples=n,
                       batch_size=16, max_length=256)
    t5 = time.perf_counter()
    diff = max(abs(a.tasks[k].metrics[m] - b.tasks[k].metrics[m])
               for k in a.tasks for m in a.tasks[k].metrics)
    row = {"genome": genome.describe()[:4], "merges": genome.has_merges, "n_examples": n,
           "mergekit_s": t3 - t0, "merge_s": t1 - t0, "load_s": t2 - t1, "score_s": t3 - t2,
           "stitch_s": t5 - t4, "max_metric_diff": diff}
    s.clock.log(f"mergekit candidate ({'merged' if genome.has_merges else 'passthrough'}, n={n}): "
                f"{row['mergekit_s']:.1f}s (merge {row['merge_s']:.1f} + load {row['load_s']:.1f} + "
                f"score {row['score_s']:.2f}) vs stitcher {row['stitch_s']:.2f}s, ratio "
                f"{row['mergekit_s'] / row['stitch_s']:.0f}x, max metric diff {diff:.3g}")
    return row


def mergekit_stage(s: Setup, k_disk: int) -> dict:
    """Up to `k_disk` candidates written to disk (fewer if disk or time is short), then up to two
    genomes (a merged one first, the worst case) through mergekit against the stitcher."""
    from gptailor_merge.demo.synthetic import write_member
    from gptailor_merge.family.family import Family
    from gptailor_merge.materialize.stitch import Stitcher
    from gptailor_merge.search.space import SearchSpace, paper_seeds

    L, family = s.family.n_layers, s.family
    member_bytes = sum(t.numel() * t.element_size() for t in family.base.tensors.values())
    free = shutil.disk_usage(s.work).free
    while k_disk > 0 and free < (k_disk + 1.8) * member_bytes:
        k_disk -= 1
    rows: list[dict] = []
    if k_disk == 0:
        s.clock.log(f"mergekit skipped: {gib(free)} free in {s.work}, each member is {gib(member_bytes)}")
        return {"disk_candidates": 0, "rows": rows}
    if s.clock.left() < 90:
        s.clock.log("mergekit skipped: not enough time left before the deadline")
        return {"disk_candidates": k_disk, "rows": rows}
    disk = s.work / "disk"
    t = time.perf_counter()
    write_member(family, 0, disk / "base", s.tokenizer)
    per_member = time.perf_counter() - t
    s.clock.log(f"base written in {per_member:.1f}s ({gib(member_bytes)})")
    while k_disk > 1 and s.clock.left() < per_member * k_disk + 240:
        k_disk -= 1
    for j in range(k_disk):
        write_member(family, j + 1, disk / f"cand{j}", s.tokenizer)
    disk_family = Family.load(disk / "base", [disk / f"cand{j}" for j in range(k_disk)])
    s.clock.log(f"{k_disk} candidate(s) written; mergekit family on disk ready")
    seeds = paper_seeds(SearchSpace(L, k_disk, s.n_keep))
    merged = [g for g in seeds if g.has_merges]
    selections = [g for g in seeds if not g.has_merges and any(x.sources for x in g.layers)]
    picked = ([merged[len(merged) // 2]] if merged else []) + selections  # worst case first
    stitch2 = Stitcher(family.with_candidates(k_disk), device=s.device, dtype=s.dtype,
                       cache_size=2 * L, model=s.model)
    for genome in picked[:2]:
        if rows and s.clock.left() < 1.3 * rows[-1]["mergekit_s"]:
            s.clock.log("second mergekit candidate skipped: not enough time left")
            break
        rows.append(mergekit_candidate(s, genome, disk_family, stitch2, s.rungs[0]))
    return {"disk_candidates": k_disk, "rows": rows}


def main(argv: Sequence[str] | None = None) -> dict:
    import transformers

    from gptailor_merge.bench.environment import git_sha, hardware, write_result
    from gptailor_merge.core.genome import Genome
    from gptailor_merge.materialize.stitch import Stitcher

    args = parse_args(argv)
    clock = Clock(args.deadline_s)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    s = setup(args, clock)
    summary: dict = {"benchmark": "gpu_check", "shape": args.shape, "dtype": s.dtype_name,
                     "git": git_sha(), "hardware": hardware(), "seed": 0, "rungs": s.rungs,
                     "corpus_sha256": {"synthetic": "random weights and generated tasks; no corpus"}}
    clock.log(f"{summary['hardware']}")
    stitcher = Stitcher(s.family, device=s.device, dtype=s.dtype, cache_size=64 if s.big else 256,
                        model=s.model)
    summary["search"], evaluator = search_stage(s, args.trials, stitcher)
    first, last = evaluator.calls[0].genome, evaluator.calls[-1].genome
    summary["prefix_equal"] = prefix_equality(s, stitcher, (first, last, first))
    if clock.left() > 2.5 * summary["search"]["seconds"] + 60:
        summary["replay"] = replay_stage(s, stitcher, evaluator.calls)
    else:
        clock.log("replay skipped: not enough time left before the deadline")
    stitcher.build(Genome.base_only(s.family.n_layers, 3))  # the base's layers back for the next Stitcher
    del evaluator
    stitcher.clear_cache()
    if s.cuda:
        torch.cuda.empty_cache()
    summary["mergekit"] = mergekit_stage(s, args.disk_candidates)
    shutil.rmtree(s.work, ignore_errors=True)
    summary["seconds"] = clock.elapsed()
    if args.json:
        write_result(args.json, summary)
        clock.log(f"wrote {args.json}")
    clock.log("gpu check done")
    return summary
