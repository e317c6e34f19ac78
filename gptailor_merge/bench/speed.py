"""Speed: the end-to-end time of one search trace with mergekit, the stitcher, and the stitcher + prefix reuse.

Replays one recorded search trace (nevergrad + successive halving, fixed seed, every `score` call
including the dense references) through (a) mergekit to disk + `from_pretrained` + score, from
recipes listing only the sources each slice uses, each trial's model materialized once and reused
for its later rungs, (b) the stitcher, (c) the stitcher with prefix reuse. Headline: the whole
trace's seconds, (a)/(b) and (a)/(c). Per rung (secondary): medians, the floor (bare forward
passes of the same batches), the scoring floor (the scorer on the built candidate) and the
materialization seconds. Writes JSON (git SHA, hardware, seed). benchmarks/gpu_check.sh replays
its variants on an in-GPU-memory family (`demo.synthetic.MemoryFamily`).

    python benchmarks/speed.py [--family synthetic|demo|smollm2] [--trials 50] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gptailor_merge.bench.environment import (
    add_device_args,
    git_sha,
    hardware,
    resolve_dtype,
    setup_torch,
    smollm2_root,
    write_result,
)
from gptailor_merge.bench.throughput import format_throughput, throughput
from gptailor_merge.core.config import DEFAULT_PREFIX_CACHE_BYTES
from gptailor_merge.core.genome import Genome
from gptailor_merge.materialize.prefix import layer_keys
from gptailor_merge.materialize.stitch import Stitcher, torch_dtype
from gptailor_merge.scoring import Task, evaluate_model, load_model_folder
from gptailor_merge.search.evaluator import Evaluator
from gptailor_merge.search.loop import run_search
from gptailor_merge.search.space import SearchSpace

WORDS = ("the cat dog sat ran on mat log fox jumps over lazy quick brown a an of to in is was "
         "add sum two three four five plus minus def return if else for while print list").split()


# ---- environment ------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- tasks and families -----------------------------------------------------------------------
def write_tasks(folder: Path, *, seed: int, n_choice: int = 120, n_text: int = 120,
                context_words: tuple[int, int] = (4, 16), text_words: tuple[int, int] = (8, 32)
                ) -> list[Task]:
    """A multiple-choice and a perplexity JSONL task of random words (speed only, no meaning)."""
    from gptailor_merge.scoring.tasks import task_from_file

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    with open(folder / "choice.jsonl", "w") as f:
        for _ in range(n_choice):
            f.write(json.dumps({"context": words(*context_words),
                                "choices": [words(1, 4) for _ in range(4)],
                                "answer": rng.randrange(4)}) + "\n")
    with open(folder / "text.jsonl", "w") as f:
        for _ in range(n_text):
            f.write(json.dumps({"text": words(*text_words)}) + "\n")
    return [task_from_file(folder / "choice.jsonl", seed=seed),
            task_from_file(folder / "text.jsonl", seed=seed)]


def setup_family(name: str, root: Path, seed: int) -> tuple[object, list[Task]]:
    """(Family, tasks) for `--family`."""
    from gptailor_merge.family.family import Family

    if name == "synthetic":
        from gptailor_merge.demo.synthetic import make_synthetic_family

        base, candidates = make_synthetic_family(root / "family", arch="llama", n_layers=12,
                                                 hidden=256, n_candidates=3, seed=seed,
                                                 max_position_embeddings=512)
        return Family.load(base, candidates), write_tasks(root / "tasks", seed=seed)
    if name == "demo":
        try:
            from gptailor_merge.demo import build_demo_family
        except ImportError as exc:
            raise SystemExit(f"--family demo needs gptailor_merge.demo ({exc}); use synthetic") from exc
        from gptailor_merge.scoring.tasks import task_from_file

        demo = build_demo_family(progress=False)
        tasks = [task_from_file(demo.task_file(t, "search"), seed=seed) for t in demo.task_names]
        tasks += [task_from_file(demo.text_file(d, "search"), seed=seed) for d in demo.domains]
        return Family.load(demo.base, demo.candidates), tasks
    if name == "smollm2":
        from gptailor_merge.scoring.tasks import task_from_file

        root = smollm2_root()
        members = [root / m for m in ("base", "prose", "code", "math")]
        if not all((m / "config.json").is_file() for m in members):
            raise SystemExit(f"--family smollm2: no built family at {root}; build it with "
                             "`python benchmarks/smollm2_family.py` (benchmarks/README.md)")
        files = sorted((root / "tasks").glob("*.search.jsonl")) + sorted((root / "text").glob("*.search.jsonl"))
        return Family.load(members[0], members[1:]), [task_from_file(f, seed=seed) for f in files]
    raise SystemExit(f"--family {name}: unknown; use synthetic, demo or smollm2")


# ---- the trace --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One `Evaluator.score` call of the recorded search."""

    genome: Genome
    split: str
    n_examples: int | None


def boundaries(args, call: Call) -> tuple[int, ...]:
    """The batching restarts the search's `Evaluator` uses for `call` (its rungs on the search
    split), so every variant runs the same batches."""
    return tuple(getattr(args, "rungs", ())) if call.split == "search" else ()


@dataclass
class RecordingEvaluator(Evaluator):
    """Scores like `Evaluator` and records every call (dense references included)."""

    calls: list = field(default_factory=list)

    def score(self, genome, split, n_examples):
        self.calls.append(Call(genome, split, n_examples))
        return super().score(genome, split, n_examples)


def make_stitcher(family, args) -> Stitcher:
    """A stitcher for the recording and the timed (b) / (c) variants: `--stitch-cache` layers."""
    return Stitcher(family, device=args.device, dtype=args.dtype, cache_size=getattr(args, "stitch_cache", 256))


def record_trace(family, tokenizer, tasks, args, run_dir: Path) -> tuple[list[Call], list[int]]:
    """Run the search once (stitcher, no prefix reuse) and return its score calls and rungs."""
    n_keep = family.n_layers - round(family.n_layers * args.remove_fraction)
    space = SearchSpace(family.n_layers, family.n_candidates, n_keep)
    rungs = sorted({max(1, args.max_examples // 3**k) for k in range(3)})
    args.rungs = tuple(rungs)
    evaluator = RecordingEvaluator(make_stitcher(family, args), tokenizer, tasks, batch_size=args.batch_size,
                                   max_length=args.max_length, prefix_cache_bytes=0, rungs=args.rungs)
    run_search(space, evaluator, run_dir, optimizer=args.optimizer, n_trials=args.trials,
               rungs=rungs, seed=args.seed, progress=False)
    evaluator.stitcher.clear_cache()  # its merged layers: memory the timed variants need
    return evaluator.calls, rungs


# ---- variants ---------------------------------------------------------------------------------
class StitchVariant:
    """(b) / (c) / (d): a fresh Evaluator over the family; `prefix_bytes` 0 is the plain
    stitcher; `shared_context` False scores each choice as its own sequence (the path before
    shared-context multiple choice), None packs them where the model allows."""

    def __init__(self, family, tokenizer, tasks, args, prefix_bytes: int,
                 stitcher: Stitcher | None = None, shared_context: bool | None = False) -> None:
        stitcher = stitcher or make_stitcher(family, args)
        self.evaluator = Evaluator(stitcher, tokenizer, tasks, batch_size=args.batch_size,
                                   max_length=args.max_length, prefix_cache_bytes=prefix_bytes,
                                   rungs=tuple(getattr(args, "rungs", ())), shared_context=shared_context)
        self.device = self.evaluator.stitcher.device
        self.skips: list[float] = []
        self.materialize: list[float] = []  # seconds in Stitcher.build per call (its own timer)
        self.built: list[int] = []  # layers merged or selected anew per call (cache misses)

    def __call__(self, call: Call) -> float:
        prefix = self.evaluator.prefix
        before = (prefix.stats.computed, prefix.stats.skipped) if prefix else (0, 0)
        stats = self.evaluator.stitcher.stats
        build_s, built = stats["build_s"], stats["built"]
        sync(self.device)
        start = time.perf_counter()
        self.evaluator.score(call.genome, call.split, call.n_examples)
        sync(self.device)
        seconds = time.perf_counter() - start
        self.materialize.append(stats["build_s"] - build_s)
        self.built.append(stats["built"] - built)
        if prefix:
            computed, skipped = prefix.stats.computed - before[0], prefix.stats.skipped - before[1]
            self.skips.append(skipped / max(computed + skipped, 1))
        return seconds


def check_lean_recipes(family, calls: Sequence[Call], work: Path, dtype: str, count: int = 3) -> dict:
    """mergekit on the lean and on the full recipe of the trace's first `count` merged genomes
    (those merging at the first or last layer first): the max |difference| over all tensors."""
    from safetensors.torch import load_file

    from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit
    from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe, lean_recipe

    refs = FamilyRefs.of(family)
    merged = list(dict.fromkeys(c.genome for c in calls if c.genome.has_merges))
    ends = [g for g in merged if g.layers[0].sources or g.layers[-1].sources]
    chosen = list(dict.fromkeys([*ends[:1], *merged]))[:count]
    worst = 0.0
    for k, genome in enumerate(chosen):
        full = genome_to_recipe(genome, refs, dtype=dtype)
        tensors = []
        for name, recipe in (("full", full), ("lean", lean_recipe(full, refs.base))):
            folder = materialize_with_mergekit(recipe, work / f"check-{k}-{name}", overwrite=True)
            tensors.append({n: t for f in sorted(folder.glob("*.safetensors")) for n, t in load_file(f).items()})
            shutil.rmtree(folder, ignore_errors=True)
        if tensors[0].keys() != tensors[1].keys():
            raise SystemExit(f"lean recipe of {genome.genome_id} names other tensors than the full one")
        worst = max([worst, *((tensors[0][n].float() - tensors[1][n].float()).abs().max().item()
                              for n in tensors[0])])
    return {"genomes": [g.genome_id for g in chosen], "max_abs_diff": worst,
            "first_or_last_layer_merged": bool(ends)}


class MergekitVariant:
    """(a): lean recipe -> mergekit folder -> from_pretrained -> score. A trial's model is
    materialized once and reused for its later rungs (and the dense reference once), as a
    mergekit-based search would do it; `materialize` holds the merge + write + load seconds of
    each call (0.0 where the model was reused)."""

    def __init__(self, family, tokenizer, tasks, args, work: Path) -> None:
        from gptailor_merge.materialize.recipe import FamilyRefs

        self.refs, self.tokenizer, self.tasks, self.args = FamilyRefs.of(family), tokenizer, tasks, args
        self.work = work
        self.materialize: list[float] = []
        self.models: dict[bool, tuple[Genome, nn.Module]] = {}  # dense reference / current trial

    def _model(self, genome: Genome) -> tuple[nn.Module, bool]:
        """(model, whether it was materialized now)."""
        from transformers import AutoModelForCausalLM

        from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit
        from gptailor_merge.materialize.recipe import genome_to_recipe, lean_recipe
        from gptailor_merge.materialize.stitch import torch_dtype

        dense = genome == Genome.base_only(self.refs.n_layers, len(self.refs.candidates))
        held = self.models.get(dense)
        if held is not None and held[0] == genome:
            return held[1], False
        args = self.args
        self.models.pop(dense, None)
        out = self.work / ("merged-dense" if dense else "merged")
        shutil.rmtree(out, ignore_errors=True)
        recipe = lean_recipe(genome_to_recipe(genome, self.refs, dtype=args.dtype), self.refs.base)
        folder = materialize_with_mergekit(recipe, out, device=args.device, overwrite=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(args.dtype))
        model.to(args.device).eval()
        self.models[dense] = (genome, model)
        return model, True

    def __call__(self, call: Call) -> float:
        args = self.args
        start = time.perf_counter()
        model, fresh = self._model(call.genome)
        sync(torch.device(args.device))
        self.materialize.append(time.perf_counter() - start if fresh else 0.0)
        evaluate_model(model, self.tokenizer, self.tasks, split=call.split,
                       n_examples=call.n_examples, batch_size=args.batch_size,
                       max_length=args.max_length, boundaries=boundaries(args, call),
                       shared_context=False)  # (a)-(c) and the floors: one sequence per choice
        sync(torch.device(args.device))
        return time.perf_counter() - start


class _Capture(nn.Module):
    """Records the batches a scorer sends, and answers with the wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.batches.append((input_ids, attention_mask))
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


class FloorVariant:
    """The floor: only the forward passes of the already-built candidate on its batches."""

    def __init__(self, family, tokenizer, tasks, args, stitcher: Stitcher | None = None) -> None:
        # its builds are not timed: a small cache keeps its memory out of (b)'s and (c)'s way
        self.stitcher = stitcher or Stitcher(family, device=args.device, dtype=args.dtype,
                                             cache_size=2 * family.n_layers)
        self.tokenizer, self.tasks, self.args = tokenizer, tasks, args
        self.batches: dict[tuple[str, int | None], list] = {}

    def __call__(self, call: Call) -> float:
        model = self.stitcher.build(call.genome)
        key = (call.split, call.n_examples)
        if key not in self.batches:  # batches depend on the tasks and the budget, not the candidate
            capture = _Capture(model)
            evaluate_model(capture, self.tokenizer, self.tasks, split=call.split,
                           n_examples=call.n_examples, batch_size=self.args.batch_size,
                           max_length=self.args.max_length, boundaries=boundaries(self.args, call))
            self.batches[key] = capture.batches
        with torch.inference_mode():
            sync(self.stitcher.device)
            start = time.perf_counter()
            for input_ids, attention_mask in self.batches[key]:
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            sync(self.stitcher.device)
        return time.perf_counter() - start


class ScoreFloorVariant(FloorVariant):
    """The scoring floor: the scorer on the already-built candidate (forward passes plus the loss
    arithmetic every variant does). (b) minus this is the stitcher's materialization alone."""

    def __call__(self, call: Call) -> float:
        model = self.stitcher.build(call.genome)
        sync(self.stitcher.device)
        start = time.perf_counter()
        evaluate_model(model, self.tokenizer, self.tasks, split=call.split, n_examples=call.n_examples,
                       batch_size=self.args.batch_size, max_length=self.args.max_length,
                       boundaries=boundaries(self.args, call), shared_context=False)
        sync(self.stitcher.device)
        return time.perf_counter() - start


VARIANTS = ("stitch", "stitch_prefix", "stitch_prefix_shared", "floor", "score_floor", "mergekit")


def build_variants(family, tokenizer, tasks, args, work: Path) -> dict:
    """The timed variants `--variants` names, in `VARIANTS` order: (a) mergekit, (b) stitch,
    (c) stitch + prefix, (d) + shared-context multiple choice, and the two floors."""
    chosen = set(args.variants)
    floor = FloorVariant(family, tokenizer, tasks, args) if chosen & {"floor", "score_floor"} else None
    make = {"stitch": lambda: StitchVariant(family, tokenizer, tasks, args, 0),
            "stitch_prefix": lambda: StitchVariant(family, tokenizer, tasks, args, args.prefix_bytes),
            "stitch_prefix_shared": lambda: StitchVariant(family, tokenizer, tasks, args, args.prefix_bytes,
                                                          shared_context=None),
            "floor": lambda: floor,
            "score_floor": lambda: ScoreFloorVariant(family, tokenizer, tasks, args, stitcher=floor.stitcher),
            "mergekit": lambda: MergekitVariant(family, tokenizer, tasks, args, work)}
    return {name: make[name]() for name in VARIANTS if name in chosen}


def time_variants(variants: dict, calls: Sequence[Call], mergekit_index: set[int]) -> dict:
    """Seconds per call and variant; variants run back to back on each call in a rotating order,
    so load from other processes falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = [n for n in variants if n != "mergekit"]
    for i, call in enumerate(calls):
        order = names[i % len(names):] + names[: i % len(names)]
        if i in mergekit_index and "mergekit" in variants:
            order.insert(i % (len(order) + 1), "mergekit")
        for name in order:
            times[name].append(variants[name](call))
    return times


# ---- report -----------------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _over(a: float | None, b: float | None) -> float | None:
    """a / b, None where a variant was not timed (`--variants`)."""
    return None if a is None or b is None else a / b


def summarize(calls, rungs, times: dict[str, list[float]], mergekit_index: list[int], skips,
              materialize: dict[str, list[float]], built: list[int]) -> dict:
    """Secondary detail per rung: median seconds per call of each variant (for (a) over the calls
    where it ran), their ratios, and the materialization seconds: mergekit's merge + write + load
    over the calls where it materialized (a trial's first rung; its later rungs reuse the model),
    the stitcher's seconds inside `Stitcher.build`."""
    per_rung = {}
    for n in rungs:
        idx = [i for i, c in enumerate(calls) if c.n_examples == n]
        timed = [mergekit_index.index(i) for i in idx if i in mergekit_index]
        fresh = [materialize["mergekit"][k] for k in timed if materialize["mergekit"][k] > 0]
        med = {"mergekit": _median([times["mergekit"][k] for k in timed]) if "mergekit" in times else None,
               **{k: _median([times[k][i] for i in idx]) if k in times else None
                  for k in ("stitch", "stitch_prefix", "stitch_prefix_shared", "floor", "score_floor")}}
        per_rung[n] = {
            "calls": len(idx), "mergekit_calls": len(timed), "mergekit_materialized": len(fresh),
            "median_s": med,
            "materialize_s": {"mergekit": _median(fresh) if fresh else None,
                              "stitch": _median([materialize["stitch"][i] for i in idx])
                              if materialize.get("stitch") else None},
            "layers_built_mean": statistics.fmean([built[i] for i in idx]) if idx and built else float("nan"),
            "mergekit_over_stitch": _over(med["mergekit"], med["stitch"]),
            "mergekit_over_stitch_prefix": _over(med["mergekit"], med["stitch_prefix"]),
            "stitch_prefix_over_shared": _over(med["stitch_prefix"], med["stitch_prefix_shared"]),
            "stitch_over_floor": _over(med["stitch"], med["floor"]),
            "score_floor_over_floor": _over(med["score_floor"], med["floor"]),
            "stitch_prefix_over_floor": _over(med["stitch_prefix"], med["floor"]),
            "prefix_skip_fraction": statistics.fmean([skips[i] for i in idx]) if idx and skips else float("nan"),
        }
    return per_rung


def trial_runs(calls: Sequence[Call]) -> int:
    """Materializations a mergekit-based search needs for the trace: one per run of consecutive
    calls on the same candidate (a trial's rungs; dense references in between do not break it),
    plus one for the dense reference."""
    dense = [c.genome == Genome.base_only(c.genome.n_layers, c.genome.n_candidates) for c in calls]
    candidates = [c.genome for c, d in zip(calls, dense, strict=True) if not d]
    runs = sum(1 for k, g in enumerate(candidates) if k == 0 or g != candidates[k - 1])
    return runs + any(dense)


def trace_totals(times: dict[str, list[float]], n_calls: int, mergekit_index: Sequence[int]) -> dict:
    """The headline: each variant's end-to-end seconds over the whole trace and the ratios
    (a)/(b), (a)/(c). (a)'s total exists only where it ran on every call (`--mergekit-per-rung 0`);
    otherwise it and the ratios are None."""
    seconds = {k: math.fsum(times[k]) if k in times else None for k in VARIANTS if k != "mergekit"}
    seconds["mergekit"] = (math.fsum(times["mergekit"])
                           if "mergekit" in times and len(mergekit_index) == n_calls else None)
    return {"seconds": seconds,
            "trace_ratio_mergekit_over_stitch": _over(seconds["mergekit"], seconds["stitch"]),
            "trace_ratio_mergekit_over_stitch_prefix": _over(seconds["mergekit"], seconds["stitch_prefix"]),
            "trace_ratio_stitch_prefix_over_shared": _over(seconds["stitch_prefix"],
                                                           seconds["stitch_prefix_shared"])}


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}s"


def _cell(value: float | None, width: int, digits: int, unit: str = "") -> str:
    """A table cell, "-" for a variant not timed."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width - len(unit)}.{digits}f}{unit}"


def print_table(per_rung: dict, totals: dict, skip_fraction: float, n_calls: int) -> None:
    s = {k: "n/a" if v is None else f"{v:.1f} s" for k, v in totals["seconds"].items()}
    print(f"whole trace ({n_calls} score calls): (a) mergekit {s['mergekit']}, (b) stitch {s['stitch']}, "
          f"(c) stitch + prefix {s['stitch_prefix']}; "
          f"a/b = {_ratio(totals['trace_ratio_mergekit_over_stitch'])}, "
          f"a/c = {_ratio(totals['trace_ratio_mergekit_over_stitch_prefix'])}")
    print(f"(d) stitch + prefix + shared-context multiple choice {s['stitch_prefix_shared']}; "
          f"c/d = {_ratio(totals['trace_ratio_stitch_prefix_over_shared'])} ((a)-(c) score each "
          f"choice as its own sequence)")
    head = (f"{'rung n':>7} {'calls':>5} {'mk':>3} {'(a) mergekit':>12} {'(b) stitch':>10} "
            f"{'(c) +prefix':>11} {'floor':>8} {'score fl':>8} {'a/b':>5} {'a/c':>5} {'b/floor':>7} "
            f"{'c/floor':>7} {'skip':>5} {'built':>5} {'mk new':>6} {'mk mat':>7} {'st mat':>7}")
    print("per rung (secondary): median seconds per call")
    print(head)
    print("-" * len(head))
    for n, r in per_rung.items():
        m = r["median_s"]
        print(f"{n:>7} {r['calls']:>5} {r['mergekit_calls']:>3} {_cell(m['mergekit'], 12, 3, 's')} "
              f"{_cell(m['stitch'], 10, 4, 's')} {_cell(m['stitch_prefix'], 11, 4, 's')} "
              f"{_cell(m['floor'], 8, 4, 's')} {_cell(m['score_floor'], 8, 4, 's')} "
              f"{_cell(r['mergekit_over_stitch'], 5, 1)} {_cell(r['mergekit_over_stitch_prefix'], 5, 1)} "
              f"{_cell(r['stitch_over_floor'], 7, 3)} {_cell(r['stitch_prefix_over_floor'], 7, 3)} "
              f"{r['prefix_skip_fraction']:>5.2f} {r['layers_built_mean']:>5.1f} "
              f"{r['mergekit_materialized']:>6} {_seconds(r['materialize_s']['mergekit']):>7} "
              f"{_cell(r['materialize_s']['stitch'], 7, 4, 's')}")
    print(f"floor: the bare forward passes, score fl: the scorer on the already-built candidate; "
          f"layer passes skipped by prefix reuse over the whole trace: {skip_fraction:.3f}; built: "
          f"mean layers merged or selected anew per call; mk new: calls where (a) materialized (a "
          f"trial's later rungs reuse its model); mk mat: median merge + write + load over those; "
          f"st mat: median seconds in Stitcher.build")


def spread(indices: Sequence[int], count: int) -> list[int]:
    """`count` of `indices` evenly spaced from first to last (all when count is 0 or larger):
    the first calls of a rung are the search's seeds, whose layers are all new."""
    if not count or count >= len(indices):
        return list(indices)
    step = (len(indices) - 1) / max(count - 1, 1)
    return sorted({indices[round(k * step)] for k in range(count)})


def throughput_section(family, tokenizer, tasks, args) -> dict:
    """`bench.throughput` on the dense base (loaded from its folder, as `evaluate` would)."""
    model, _ = load_model_folder(family.base.path, device=args.device, dtype=torch_dtype(args.dtype))
    section = throughput(model, tokenizer, tasks, batch_size=args.batch_size, max_length=args.max_length)
    print(format_throughput(section), flush=True)
    del model
    return section


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=("synthetic", "demo", "smollm2"), default="synthetic")
    p.add_argument("--trials", type=int, default=50, help="search trials in the trace (>= 50)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/speed.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", default="DiscreteLenglerOnePlusOne")
    p.add_argument("--remove-fraction", type=float, default=0.25)
    p.add_argument("--max-examples", type=int, default=54, help="examples per task at the top rung")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    add_device_args(p)
    p.add_argument("--prefix-bytes", type=int, default=DEFAULT_PREFIX_CACHE_BYTES)
    p.add_argument("--tasks", nargs="+", default=None, metavar="NAME",
                   help="score only these of the family's tasks (e.g. ppl_prose ppl_code ppl_math)")
    p.add_argument("--stitch-cache", type=int, default=256,
                   help="layers the recording, (b) and (c) stitchers keep (SmolLM2: 14 MB per merged layer)")
    p.add_argument("--mergekit-per-rung", type=int, default=0,
                   help="time (a) on N calls per rung, evenly spaced over the trace (it is slow); "
                        "0: all (needed for the trace ratios)")
    p.add_argument("--throughput", action="store_true",
                   help="first, the throughput section: the base on every held-out example of the "
                        "tasks, per-choice vs shared-context multiple choice, against a bare-matmul floor")
    p.add_argument("--throughput-only", action="store_true", help="the throughput section, no trace")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), metavar="NAME",
                   help="time only these trace variants (e.g. stitch_prefix stitch_prefix_shared for c/d "
                        "on a family where the full set takes hours); default all")
    p.add_argument("--no-check-lean", dest="check_lean", action="store_false",
                   help="skip checking, through mergekit, that (a)'s lean recipes give the same "
                        "models as the full ones")
    args = p.parse_args(argv)
    resolve_dtype(args)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    git = git_sha()  # the code that runs is the code at the start (a commit during a long run must not relabel it)
    setup_torch(args.threads)
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="gptailor-speed-") as tmp:
        work = Path(tmp)
        family, tasks = setup_family(args.family, work, args.seed)
        if args.tasks:
            missing = sorted(set(args.tasks) - {t.name for t in tasks})
            if missing:
                raise SystemExit(f"--tasks {' '.join(missing)}: not tasks of this family "
                                 f"({', '.join(t.name for t in tasks)})")
            tasks = [t for t in tasks if t.name in args.tasks]
        tokenizer = AutoTokenizer.from_pretrained(family.base.path)
        section = (throughput_section(family, tokenizer, tasks, args)
               if args.throughput or args.throughput_only else None)
        if args.throughput_only:
            result = {"benchmark": "speed", "git": git, "hardware": hardware(),
                      "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                      "family": args.family, "throughput": section}
            write_result(args.json, result)
            print(f"wrote {args.json}")
            return result
        t0 = time.perf_counter()
        calls, rungs = record_trace(family, tokenizer, tasks, args, work / "run")
        print(f"trace: {args.trials} trials -> {len(calls)} score calls at rungs {rungs} "
              f"({time.perf_counter() - t0:.0f}s to record)", flush=True)
        per = args.mergekit_per_rung
        mergekit_index = sorted(i for n in rungs for i in
                                spread([j for j, c in enumerate(calls) if c.n_examples == n], per)
                                if "mergekit" in args.variants)
        variants = build_variants(family, tokenizer, tasks, args, work)
        lean_check = (check_lean_recipes(family, calls, work, args.dtype)
                      if args.check_lean and "mergekit" in variants else None)
        times = time_variants(variants, calls, set(mergekit_index))
        prefixed = variants.get("stitch_prefix")
        skips = prefixed.skips if prefixed else []
        prefix_stats = prefixed.evaluator.prefix.stats.as_dict() if prefixed else {}
        materialize = {"mergekit": variants["mergekit"].materialize if "mergekit" in variants else [],
                       "stitch": variants["stitch"].materialize if "stitch" in variants else []}
        built = variants["stitch"].built if "stitch" in variants else []
    per_rung = summarize(calls, rungs, times, mergekit_index, skips, materialize, built)
    totals = trace_totals(times, len(calls), mergekit_index)
    print_table(per_rung, totals, prefix_stats.get("skip_fraction", 0.0), len(calls))
    if lean_check is not None:
        print(f"lean recipes (a) uses vs the full ones, {len(lean_check['genomes'])} merged genomes "
              f"through mergekit: max |tensor difference| {lean_check['max_abs_diff']:.3g}")
    result = {
        "benchmark": "speed", "git": git, "hardware": hardware(), "seed": args.seed,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "family": args.family, "trials": args.trials, "score_calls": len(calls), "rungs": rungs,
        # the headline: end-to-end seconds of the whole trace, (a) / (b) and (a) / (c)
        "trace_ratio_mergekit_over_stitch": totals["trace_ratio_mergekit_over_stitch"],
        "trace_ratio_mergekit_over_stitch_prefix": totals["trace_ratio_mergekit_over_stitch_prefix"],
        "trace_seconds": totals["seconds"],
        "trace_ratio_stitch_prefix_over_shared": totals["trace_ratio_stitch_prefix_over_shared"],
        "throughput": section,
        "mergekit_materializations": sum(v > 0 for v in materialize["mergekit"]),
        "expected_materializations": trial_runs(calls) if len(mergekit_index) == len(calls) else None,
        "lean_recipe_check": lean_check,
        # secondary: per rung
        "per_rung": {str(n): r for n, r in per_rung.items()},
        "time_ratio_mergekit_over_stitch": {str(n): r["mergekit_over_stitch"] for n, r in per_rung.items()},
        "time_ratio_mergekit_over_stitch_prefix": {
            str(n): r["mergekit_over_stitch_prefix"] for n, r in per_rung.items()},
        "stitch_over_floor": {str(n): r["stitch_over_floor"] for n, r in per_rung.items()},
        "stitch_prefix_over_floor": {str(n): r["stitch_prefix_over_floor"] for n, r in per_rung.items()},
        "prefix_skip_fraction": prefix_stats.get("skip_fraction", 0.0),
        "prefix_stats": prefix_stats,
        "times_s": times, "materialize_s": materialize, "layers_built": built,
        # merged or selected layers the trace needs, each once (what (b) builds with a cache this big)
        "distinct_layers": len({key for c in calls
                                for key, spec in zip(layer_keys(c.genome), c.genome.layers) if spec.sources}),
        "mergekit_calls": mergekit_index,
        "call_examples": [c.n_examples for c in calls],
    }
    write_result(args.json, result)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
