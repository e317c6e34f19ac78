"""`+repair` rows for a finished quality result, without re-running its searches.

A SmolLM2 quality table is ~a day on 2 cores; a change to the repair changes only its `+repair`
rows. This script takes the genomes of a quality JSON (ShortGPT, greedy-ppl, GPTailor's winner),
repairs them with the current code, scores them on the same held-out and transfer examples, and
computes paired intervals against the stored unrepaired rows and the best baseline.

Honesty checks: every unrepaired reference row named by `--verify` is re-scored with the current
code and must reproduce its stored per-example values (max |diff| is written; a mismatch stops the
script), and the output JSON records both code versions. Only the new rows carry this run's SHA.

    python benchmarks/repair_rows.py --from benchmarks/results/quality-smollm2.json \
        --json benchmarks/results/repair-smollm2.json [--repair-texts 128] [--verify shortgpt]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from gptailor_merge.bench import quality as Q
from gptailor_merge.bench.environment import hardware, setup_torch, write_result

# the quality.py settings that decide which examples a row is scored on and how
CARRIED = ("family", "demo_preset", "heldout_examples", "transfer_texts", "seed", "calibration_texts",
           "batch_size", "max_length", "dtype", "trials", "max_examples")
VERIFY_TOLERANCE = 1e-4  # per-example summed NLL (nats) of a re-scored row; accuracies must be equal


def quality_argv(old_args: dict, threads: int | None, repair_texts: int) -> list[str]:
    """quality.py flags that rebuild the old run's family, tasks and evaluators."""
    argv = []
    for key in CARRIED:
        value = old_args.get(key)
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    argv += ["--repair-texts", str(repair_texts)]
    return argv + ([] if threads is None else ["--threads", str(threads)])


def genome_of(row: dict, family):
    from gptailor_merge.core.genome import Genome

    if row.get("genome"):
        return Genome.from_dict(row["genome"])
    return Genome.base_only(family.n_layers, family.n_candidates, row["removed"])


def max_difference(row: dict, fresh: dict) -> float:
    """Largest per-example difference between a stored row and the same row scored again
    (infinite where an accuracy differs or an example is missing)."""
    worst = 0.0
    for key in ("per_example", "transfer_per_example"):
        for task, values in row[key].items():
            for metric, stored in values.items():
                again = fresh[key].get(task, {}).get(metric)
                if again is None or len(again) != len(stored):
                    return float("inf")
                if metric != "nll_sum" and list(again) != list(stored):
                    return float("inf")
                worst = max(worst, *(abs(a - b) for a, b in zip(again, stored, strict=True)))
    return worst


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="source", type=Path, required=True, help="a quality.py JSON result")
    p.add_argument("--json", type=Path, required=True, help="where to write the new rows")
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--repair-texts", type=int, default=128,
                   help="search-split texts per text task the repair fits on")
    p.add_argument("--verify", nargs="*", default=["shortgpt"], metavar="METHOD",
                   help="unrepaired rows to re-score and check against the stored ones")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_torch(args.threads)
    logging.getLogger("gptailor_merge.scoring.objectives").setLevel(logging.ERROR)
    if not args.source.is_file():
        raise SystemExit(f"--from {args.source}: no such file; give a quality.py --json result")
    old = json.loads(args.source.read_text())
    if not old.get("complete"):
        raise SystemExit(f"--from {args.source}: the quality run is not complete; finish it first")
    reference = [r for r in old["rows"] if not r["method"].endswith("+repair") and r["method"] != Q.REPAIR_PICK
                 and r["remove_fraction"] in (0.0, args.fraction)]  # the rows before the repaired ones
    present = {r["method"] for r in reference}
    needed = dict.fromkeys(("member-base", *Q.REPAIRED_BASELINES, "gptailor", *args.verify))
    missing = [m for m in needed if m not in present]
    if missing:
        raise SystemExit(f"--from {args.source} has no {', '.join(missing)} row at remove "
                         f"{args.fraction:g}; give the fraction its searches ran at (--fraction)")
    qargs = Q.parse_args(quality_argv(old["args"], args.threads, args.repair_texts))
    started = time.perf_counter()
    ctx = Q.setup(qargs)
    bench = Q.Bench(ctx.family, ctx.tasks, ctx.transfer, ctx.config.search.metric,
                    ctx.config.eval.heldout_examples, len(reference) + len(Q.REPAIRED_BASELINES) + 1)
    bench.rows = list(reference)
    base = next(r for r in reference if r["method"] == "member-base")
    bench.base, bench.counted = bench.scores(base), old["counted_tasks"]
    by_method = {r["method"]: r for r in reference}

    verified = {}
    for method in args.verify:
        row = by_method[method]
        score, transfer, seconds = Q.score_stitched(bench, ctx.evaluator, ctx.transfer_ev,
                                                    genome_of(row, ctx.family))
        fresh = {"per_example": Q.score_json(score)[1], "transfer_per_example": Q.score_json(transfer)[1]}
        verified[method] = {"max_abs_diff": max_difference(row, fresh), "seconds": round(seconds, 1)}
        print(f"verify {method}: stored row ({row['git_sha']['sha'][:7]}) re-scored, max |diff| "
              f"{verified[method]['max_abs_diff']:.2e}", flush=True)
        if verified[method]["max_abs_diff"] > VERIFY_TOLERANCE:
            raise SystemExit(f"{method} no longer scores as stored: this code is not comparable with "
                             f"{args.source}; rerun quality.py instead")

    genomes = {m: genome_of(by_method[m], ctx.family) for m in (*Q.REPAIRED_BASELINES, "gptailor")}
    Q.repair_rows(bench, ctx.evaluator, ctx.config, ctx.tokenizer, args.fraction, genomes, qargs)
    Q.comparisons(bench)
    new_rows = [r for r in bench.rows if r["method"].endswith("+repair")]
    result = {
        "benchmark": "repair_rows", "git": bench.git, "hardware": hardware(),
        "source": {"path": str(args.source), "git": old["git"], "args": old["args"]},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "repair_examples_per_task": args.repair_texts, "verified": verified,
        "counted_tasks": bench.counted, "rows": new_rows, "complete": True,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    from gptailor_merge.scoring.intervals import interval_text

    shown = [r for r in bench.rows if r["method"] in ("shortgpt", "greedy-ppl", "gptailor")] + new_rows
    print()
    print(Q.table(shown, ctx.tasks, ctx.transfer))
    print()
    for r in new_rows:
        print(f"{r['method']}: vs unrepaired {interval_text(r.get('vs_unrepaired'))}, transfer "
              f"{interval_text(r.get('transfer_vs_unrepaired'))}; vs best baseline "
              f"{interval_text(r.get('vs_best_baseline'))}")
    write_result(args.json, result)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
