"""Speed: what one candidate costs with mergekit, the in-memory stitcher, and the stitcher + prefix reuse.

Replays one recorded search trace (nevergrad + successive halving, fixed seed, every `score` call
including the dense references) through (a) mergekit to disk + `from_pretrained` + score, (b) the
stitcher, (c) the stitcher with prefix reuse; the floor is the bare forward passes of the same
candidates on the same batches, the scoring floor the scorer on the already-built candidate.
Materialization is also timed directly: mergekit's merge + write + load, the stitcher's `build`.
Prints a table per fidelity rung and writes JSON (git SHA, hardware, seed). Also home of
`MemoryFamily`, the in-GPU-memory family of benchmarks/gpu_check.sh.

    python benchmarks/speed.py [--family synthetic|demo|smollm2] [--trials 50] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from gptailor_merge.genome import Genome  # noqa: E402
from gptailor_merge.prefix import DEFAULT_PREFIX_CACHE_BYTES, layer_keys  # noqa: E402
from gptailor_merge.scoring import Task, evaluate_model  # noqa: E402
from gptailor_merge.search import Evaluator, run_search  # noqa: E402
from gptailor_merge.space import SearchSpace  # noqa: E402
from gptailor_merge.stitch import Stitcher  # noqa: E402

WORDS = ("the cat dog sat ran on mat log fox jumps over lazy quick brown a an of to in is was "
         "add sum two three four five plus minus def return if else for while print list").split()
ROOT = Path(__file__).resolve().parents[1]


# ---- environment ------------------------------------------------------------------------------
def git_sha() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    return {"sha": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}


def hardware() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def setup_torch(threads: int | None) -> None:
    """Every benchmark's start: the torch thread count, transformers' bars and chatter off."""
    import transformers

    if threads:
        torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def write_result(path: Path, result: dict) -> None:
    """The result JSON, written atomically (a killed run leaves the previous file whole)."""
    from gptailor_merge.atomic import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)


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
    from gptailor_merge.family import Family

    if name == "synthetic":
        from gptailor_merge.synthetic import make_synthetic_family

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
        from gptailor_merge.demo import default_cache_dir
        from gptailor_merge.scoring.tasks import task_from_file

        root = default_cache_dir() / "smollm2-family"
        members = [root / m for m in ("base", "prose", "code", "math")]
        if not all((m / "config.json").is_file() for m in members):
            raise SystemExit(f"--family smollm2: no built family at {root}; build it with "
                             "`python benchmarks/smollm2_family.py` (benchmarks/README.md)")
        files = sorted((root / "tasks").glob("*.search.jsonl")) + sorted((root / "text").glob("*.search.jsonl"))
        return Family.load(members[0], members[1:]), [task_from_file(f, seed=seed) for f in files]
    raise SystemExit(f"--family {name}: unknown; use synthetic, demo or smollm2")


@dataclass
class MemoryMember:
    """A family member whose tensors live in memory (a `family.Member` look-alike for `Stitcher`)."""

    name: str
    config: object
    tensors: dict[str, torch.Tensor]
    path: Path = Path("/nonexistent")

    @property
    def model_id(self) -> str:
        return f"memory:{self.name}"

    def tensor(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)


@dataclass
class MemoryFamily:
    """Base + candidates held as tensors (e.g. in GPU memory): what `Stitcher` reads, no disk.

    Candidates hold only their decoder-layer tensors (embeddings, norm and head come from the base);
    `write_member` puts a member on disk (base's non-layer tensors) for the mergekit backend.
    """

    base: MemoryMember
    candidates: tuple[MemoryMember, ...]
    layer_names: list[list[str]] = field(default_factory=list)

    @property
    def members(self) -> tuple[MemoryMember, ...]:
        return (self.base, *self.candidates)

    @property
    def n_layers(self) -> int:
        return int(self.base.config.num_hidden_layers)

    @property
    def n_candidates(self) -> int:
        return len(self.candidates)

    def layer_tensor_names(self, layer_idx: int) -> list[str]:
        return self.layer_names[layer_idx]

    def with_candidates(self, count: int) -> MemoryFamily:
        return MemoryFamily(self.base, self.candidates[:count], self.layer_names)


def build_memory_family(config, *, n_candidates: int = 3, noise: float = 0.05, seed: int = 0,
                        device: str = "cpu", dtype: torch.dtype = torch.float32
                        ) -> tuple[MemoryFamily, nn.Module]:
    """A random base built on `device` and `n_candidates` perturbed copies of its layers:
    candidate j's tensor = base + N(0, (noise * std(base))^2), as `make_synthetic_family` does."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    config.architectures = [type(model).__name__]  # mergekit finds its architecture info by this
    state = dict(model.state_dict())
    layer_names = [[n for n in state if n.startswith(f"model.layers.{i}.")]
                   for i in range(config.num_hidden_layers)]
    base = MemoryMember("base", config, state)
    candidates = []
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    for j in range(n_candidates):
        tensors = {}
        with torch.no_grad():
            for names in layer_names:
                for n in names:
                    b = state[n]
                    scale = noise * b.float().std().clamp_min(1e-3).item()
                    delta = torch.randn(b.shape, generator=generator, device=device, dtype=torch.float32)
                    tensors[n] = (b.float() + delta * scale).to(dtype)
                    del delta
        candidates.append(MemoryMember(f"cand{j}", config, tensors))
    return MemoryFamily(base, tuple(candidates), layer_names), model


def write_member(family: MemoryFamily, index: int, out: Path, tokenizer) -> Path:
    """Member `index` (0 = base) as a Hugging Face folder (one safetensors file) for mergekit."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    member = family.members[index]
    tensors = {n: member.tensors.get(n, t).detach().to("cpu").contiguous()
               for n, t in family.base.tensors.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    family.base.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


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
    """(b) / (c): a fresh Evaluator over the family; `prefix_bytes` 0 is the plain stitcher."""

    def __init__(self, family, tokenizer, tasks, args, prefix_bytes: int,
                 stitcher: Stitcher | None = None) -> None:
        stitcher = stitcher or make_stitcher(family, args)
        self.evaluator = Evaluator(stitcher, tokenizer, tasks, batch_size=args.batch_size,
                                   max_length=args.max_length, prefix_cache_bytes=prefix_bytes,
                                   rungs=tuple(getattr(args, "rungs", ())))
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


class MergekitVariant:
    """(a): recipe -> mergekit folder -> from_pretrained -> score, all timed."""

    def __init__(self, family, tokenizer, tasks, args, work: Path) -> None:
        from gptailor_merge.recipe import FamilyRefs

        self.refs, self.tokenizer, self.tasks, self.args = FamilyRefs.of(family), tokenizer, tasks, args
        self.out = work / "merged"
        self.materialize: list[float] = []  # merge + write + load seconds per call

    def __call__(self, call: Call) -> float:
        from transformers import AutoModelForCausalLM

        from gptailor_merge.materialize import materialize_with_mergekit
        from gptailor_merge.recipe import genome_to_recipe
        from gptailor_merge.stitch import torch_dtype

        args = self.args
        shutil.rmtree(self.out, ignore_errors=True)
        start = time.perf_counter()
        recipe = genome_to_recipe(call.genome, self.refs, dtype=args.dtype)
        folder = materialize_with_mergekit(recipe, self.out, device=args.device, overwrite=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(args.dtype))
        model.to(args.device).eval()
        sync(torch.device(args.device))
        self.materialize.append(time.perf_counter() - start)
        evaluate_model(model, self.tokenizer, self.tasks, split=call.split,
                       n_examples=call.n_examples, batch_size=args.batch_size,
                       max_length=args.max_length, boundaries=boundaries(args, call))
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
                       boundaries=boundaries(self.args, call))
        sync(self.stitcher.device)
        return time.perf_counter() - start


def time_variants(variants: dict, calls: Sequence[Call], mergekit_index: set[int]) -> dict:
    """Seconds per call and variant; variants run back to back on each call in a rotating order,
    so load from other processes falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = [n for n in variants if n != "mergekit"]
    for i, call in enumerate(calls):
        order = names[i % len(names):] + names[: i % len(names)]
        if i in mergekit_index:
            order.insert(i % (len(order) + 1), "mergekit")
        for name in order:
            times[name].append(variants[name](call))
    return times


# ---- report -----------------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(calls, rungs, times: dict[str, list[float]], mergekit_index: list[int], skips,
              materialize: dict[str, list[float]], built: list[int]) -> dict:
    """Per rung: medians, ratios and the materialization overheads, on the calls where (a) ran.

    mergekit's overhead is its merge + write + load, timed around those steps. The stitcher's is
    (b) minus the scoring floor on the same call (the scorer on the built model: (b) less its
    build), and, timed directly, the seconds inside `Stitcher.build`; (b) minus the pure forward
    floor is kept too (it also holds the loss arithmetic, which mergekit's timed steps leave out).
    """
    per_rung = {}
    for n in rungs:
        idx = [i for i, c in enumerate(calls) if c.n_examples == n]
        timed = [i for i in idx if i in mergekit_index]
        mk_at = {i: mergekit_index.index(i) for i in timed}
        med = {"mergekit": _median([times["mergekit"][mk_at[i]] for i in timed]),
               **{k: _median([times[k][i] for i in idx])
                  for k in ("stitch", "stitch_prefix", "floor", "score_floor")}}
        mk_mat = _median([materialize["mergekit"][mk_at[i]] for i in timed])
        st_mat = _median([materialize["stitch"][i] for i in timed])
        over_score = _median([times["stitch"][i] - times["score_floor"][i] for i in timed])
        over_forward = _median([times["stitch"][i] - times["floor"][i] for i in timed])
        per_rung[n] = {
            "calls": len(idx), "mergekit_calls": len(timed), "median_s": med,
            "overhead_s": {"mergekit": mk_mat, "stitch": over_score, "stitch_minus_forward_floor": over_forward,
                           "mergekit_minus_score_floor": _median(
                               [times["mergekit"][mk_at[i]] - times["score_floor"][i] for i in timed])},
            "materialize_s": {"mergekit": mk_mat, "stitch": st_mat},
            # None: the stitcher's overhead is not measurable above timing noise (<= 0)
            "overhead_ratio": _over(mk_mat, over_score),
            "overhead_ratio_vs_forward_floor": _over(mk_mat, over_forward),
            "materialize_ratio": _over(mk_mat, st_mat),
            "layers_built_mean": statistics.fmean([built[i] for i in idx]) if idx else float("nan"),
            "mergekit_over_stitch": med["mergekit"] / med["stitch"],
            "mergekit_over_stitch_prefix": med["mergekit"] / med["stitch_prefix"],
            "stitch_over_floor": med["stitch"] / med["floor"],
            "score_floor_over_floor": med["score_floor"] / med["floor"],
            "stitch_prefix_over_floor": med["stitch_prefix"] / med["floor"],
            "prefix_skip_fraction": statistics.fmean([skips[i] for i in idx]) if idx else float("nan"),
        }
    return per_rung


def _over(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def print_table(per_rung: dict, skip_fraction: float) -> None:
    head = (f"{'rung n':>7} {'calls':>5} {'mk':>3} {'(a) mergekit':>12} {'(b) stitch':>10} "
            f"{'(c) +prefix':>11} {'floor':>8} {'score fl':>8} {'a/b':>5} {'a/c':>5} {'b/floor':>7} "
            f"{'c/floor':>7} {'skip':>5} {'built':>5} {'mk mat':>7} {'b-scfl':>8} {'b-floor':>8} "
            f"{'st mat':>7} {'ovh a/b':>7} {'vs fwd':>7} {'mat a/b':>7}")
    print(head)
    print("-" * len(head))
    for n, r in per_rung.items():
        m, o = r["median_s"], r["overhead_s"]
        print(f"{n:>7} {r['calls']:>5} {r['mergekit_calls']:>3} {m['mergekit']:>11.3f}s "
              f"{m['stitch']:>9.4f}s {m['stitch_prefix']:>10.4f}s {m['floor']:>7.4f}s "
              f"{m['score_floor']:>7.4f}s {r['mergekit_over_stitch']:>5.1f} "
              f"{r['mergekit_over_stitch_prefix']:>5.1f} {r['stitch_over_floor']:>7.3f} "
              f"{r['stitch_prefix_over_floor']:>7.3f} {r['prefix_skip_fraction']:>5.2f} "
              f"{r['layers_built_mean']:>5.1f} {o['mergekit']:>6.3f}s {o['stitch']:>7.4f}s "
              f"{o['stitch_minus_forward_floor']:>7.4f}s {r['materialize_s']['stitch']:>6.4f}s "
              f"{_ratio(r['overhead_ratio']):>7} {_ratio(r['overhead_ratio_vs_forward_floor']):>7} "
              f"{_ratio(r['materialize_ratio']):>7}")
    print(f"median seconds per candidate (one score call at one rung); floor: the bare forward passes, "
          f"score fl: the scorer on the already-built candidate; layer passes skipped by prefix reuse "
          f"over the whole trace: {skip_fraction:.3f}; built: mean layers merged or selected anew per "
          f"call; mk mat: mergekit's merge + write + load; b-scfl / b-floor: (b) minus score fl / "
          f"floor; st mat: seconds in Stitcher.build; ovh a/b = mk mat / b-scfl, vs fwd = mk mat / "
          f"b-floor, mat a/b = mk mat / st mat; overheads are medians over the calls where (a) ran "
          f"(n/a: not measurable above timing noise)")


def spread(indices: Sequence[int], count: int) -> list[int]:
    """`count` of `indices` evenly spaced from first to last (all when count is 0 or larger):
    the first calls of a rung are the search's seeds, whose layers are all new."""
    if not count or count >= len(indices):
        return list(indices)
    step = (len(indices) - 1) / max(count - 1, 1)
    return sorted({indices[round(k * step)] for k in range(count)})


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
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default bfloat16 on cuda, float32 on cpu")
    p.add_argument("--prefix-bytes", type=int, default=DEFAULT_PREFIX_CACHE_BYTES)
    p.add_argument("--tasks", nargs="+", default=None, metavar="NAME",
                   help="score only these of the family's tasks (e.g. ppl_prose ppl_code ppl_math)")
    p.add_argument("--stitch-cache", type=int, default=256,
                   help="layers the recording, (b) and (c) stitchers keep (SmolLM2: 14 MB per merged layer)")
    p.add_argument("--mergekit-per-rung", type=int, default=0,
                   help="time (a) on N calls per rung, evenly spaced over the trace (it is slow); 0: all")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
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
        t0 = time.perf_counter()
        calls, rungs = record_trace(family, tokenizer, tasks, args, work / "run")
        print(f"trace: {args.trials} trials -> {len(calls)} score calls at rungs {rungs} "
              f"({time.perf_counter() - t0:.0f}s to record)", flush=True)
        per = args.mergekit_per_rung
        mergekit_index = sorted(i for n in rungs for i in
                                spread([j for j, c in enumerate(calls) if c.n_examples == n], per))
        prefixed = StitchVariant(family, tokenizer, tasks, args, args.prefix_bytes)
        floor = FloorVariant(family, tokenizer, tasks, args)
        variants = {"stitch": StitchVariant(family, tokenizer, tasks, args, 0),
                    "stitch_prefix": prefixed,
                    "floor": floor,
                    "score_floor": ScoreFloorVariant(family, tokenizer, tasks, args, stitcher=floor.stitcher),
                    "mergekit": MergekitVariant(family, tokenizer, tasks, args, work)}
        times = time_variants(variants, calls, set(mergekit_index))
        skips = prefixed.skips
        prefix_stats = prefixed.evaluator.prefix.stats.as_dict()
        materialize = {"mergekit": variants["mergekit"].materialize,
                       "stitch": variants["stitch"].materialize}
        built = variants["stitch"].built
    per_rung = summarize(calls, rungs, times, mergekit_index, skips, materialize, built)
    print_table(per_rung, prefix_stats.get("skip_fraction", 0.0))
    result = {
        "benchmark": "speed", "git": git_sha(), "hardware": hardware(), "seed": args.seed,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "family": args.family, "trials": args.trials, "score_calls": len(calls), "rungs": rungs,
        "per_rung": {str(n): r for n, r in per_rung.items()},
        "overhead_ratio_mergekit_over_stitch": {str(n): r["overhead_ratio"] for n, r in per_rung.items()},
        "overhead_ratio_mergekit_over_stitch_vs_forward_floor": {
            str(n): r["overhead_ratio_vs_forward_floor"] for n, r in per_rung.items()},
        "materialize_ratio_mergekit_over_stitch": {str(n): r["materialize_ratio"] for n, r in per_rung.items()},
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
