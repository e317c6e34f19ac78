"""Ad-hoc: held-out rows of the finished SmolLM2 ablation searches (journals at 18c37b8) with quality.py's own
functions, against the stored rows of quality-smollm2.json; paired intervals. Not a quality.py table."""
import json
import sys
from pathlib import Path

# run from a worktree at 300c6ee: its benchmarks/ (quality.py, compare.py) and package
sys.path.insert(0, "/work/bench2/benchmarks")
sys.path.insert(0, "/work/bench2")
import quality as Q  # noqa: E402
from compare import compare  # noqa: E402

from gptailor_merge.core.genome import Genome
from gptailor_merge.scoring.intervals import interval_text

old = json.loads(Path("/work/sm-out/quality-smollm2.json").read_text())
args = Q.parse_args(["--family", "smollm2", "--remove", "0.25", "--trials", "60", "--max-examples", "27",
                     "--heldout-examples", "128", "--calibration-texts", "8", "--threads", "1"])
Q.setup_torch(1)
ctx = Q.setup(args)
rows = [r for r in old["rows"] if not r["method"].endswith("+repair")]
bench = Q.Bench(ctx.family, ctx.tasks, ctx.transfer, ctx.config.search.metric, 128, len(rows) + 2)
bench.rows = list(rows)
bench.base, bench.counted = bench.scores(rows[0]), old["counted_tasks"]
out = {}
for name in sys.argv[1:]:
    summary = json.loads(Path(f"/work/sm-out/runs/remove0.25-{name}/summary.json").read_text())
    s = summary["search"]
    genome = Genome.from_dict(summary["best_genome"])
    score, transfer, sec = Q.score_stitched(bench, ctx.evaluator, ctx.transfer_ev, genome)
    bench.add(name, 0.25, genome.kept, score, transfer, seconds=s["trial_seconds"], heldout_seconds=sec,
              trials=s["trials"], optimizer_trials=s["optimizer_trials"], winner_trial=s["best_trial"],
              winner_origin=s["winner_origin"], winner_from_seed=s["winner_from_seed"], removed=list(genome.removed))
Q.comparisons(bench)
by = {r["method"]: r for r in bench.rows}
saved = {"rows": bench.rows, "tasks": old["tasks"], "counted_tasks": old["counted_tasks"], "args": old["args"]}
for name in sys.argv[1:]:
    c = compare(saved, "gptailor", name, fraction=0.25)
    print("gptailor minus", name, interval_text(c["heldout"]), "transfer", interval_text(c["transfer"]), flush=True)
for name in sys.argv[1:]:
    r = by[name]
    print(name, r["retention_sym"], r["retention_sym_text"], r["transfer"]["retention_sym"], "winner", r["winner_trial"], r["winner_origin"],
          "vs best", interval_text(r.get("vs_best_baseline")), "transfer", interval_text(r.get("transfer_vs_best_baseline")),
          "vs seeds-only", interval_text(r.get("vs_seeds_only")), flush=True)
print(Q.table([by[m] for m in ("shortgpt", "gptailor-seeds-only", *sys.argv[1:], "gptailor")], ctx.tasks, ctx.transfer))
Path("/work/sm-abl/adhoc.json").write_text(json.dumps({"rows": [by[m] for m in sys.argv[1:]]}, indent=1))
