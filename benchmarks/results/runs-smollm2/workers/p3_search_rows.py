"""Second worker for the SmolLM2 all-held-out quality run (code 18c37b8): scores the four search rows with
quality.py's own functions while quality.py (the first worker) scores members and baselines in order. The rows
are merged into quality.py's JSON afterwards and `quality.py --resume` assembles the table from them (it keeps
rows of the same settings and code version only)."""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, "/work/bench/benchmarks")
sys.path.insert(0, "/work/bench")
import quality as Q  # noqa: E402

A = Path("/work/sm-full/quality-smollm2.json")
B = Path("/work/sm-full/quality-smollm2-searches.json")
argv = ["--family", "smollm2", "--remove", "0.25", "--trials", "60", "--max-examples", "27",
        "--calibration-texts", "8", "--anytime-points", "1", "--threads", "1", "--skip-repair",
        "--runs-dir", "/work/sm-out/runs", "--json", str(B), "--resume"]
args = Q.parse_args(argv)
Q.setup_torch(1)
# quality.main's setup at 18c37b8 (quality.setup came later), minus the baselines' calibration
from transfer import transfer_tasks  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from gptailor_merge.core.genome import Genome  # noqa: E402
from gptailor_merge.materialize.stitch import Stitcher  # noqa: E402
from gptailor_merge.run.optimize import search_space  # noqa: E402
from gptailor_merge.run.resolve import load_tasks, resolve_family  # noqa: E402
from gptailor_merge.search.search import Evaluator  # noqa: E402

family_part = Q.family_config(args)
config = Q.run_config(family_part, args)
family, names = resolve_family(config, progress=False)
tasks = load_tasks(config)
transfer, _ = transfer_tasks(args.transfer_texts)
ev, s = config.eval, config.search
stitcher = Stitcher(family, device=ev.device, dtype=ev.dtype)
tokenizer = AutoTokenizer.from_pretrained(family.base.path)
evaluator = Evaluator(stitcher, tokenizer, tasks, batch_size=ev.batch_size, max_length=ev.max_length,
                      metric=s.metric, rungs=tuple(s.rungs()), chance_z=s.chance_z, mc_objective=s.mc_objective)
transfer_ev = Evaluator(stitcher, tokenizer, transfer, batch_size=ev.batch_size, max_length=ev.max_length,
                        prefix_cache_bytes=0)
bench = Q.Bench(family, tasks, transfer, s.metric, ev.heldout_examples, 5)


def a_rows() -> dict:
    return {r["method"]: r for r in json.loads(A.read_text())["rows"]} if A.is_file() else {}


def save() -> None:
    B.write_text(json.dumps({"git": bench.git, "args": {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in vars(args).items()},
                             "rows": bench.rows}))


# 1. the three ablation searches before the dense base's row exists (quality.py writes its JSON only after
#    all four members): their yardstick fields are recomputed against member-base in step 2
settings = dict(Q.SEARCH_ROWS)
for method in ("gptailor-removal-only", "gptailor-random", "gptailor-no-seeds"):
    Q.SEARCH_ROWS = ((method, settings[method]),)
    Q.gptailor_rows(bench, evaluator, transfer_ev, family_part, 0.25, args.runs_dir, args, [])
    save()
    print("row", method, flush=True)

# 2. member-base from quality.py's JSON, as `quality.py --resume` takes it; the rows re-added against it
while "member-base" not in a_rows():
    time.sleep(30)
base = a_rows()["member-base"]
assert base["git_sha"] == bench.git, (base["git_sha"], bench.git)
bench.base, bench.counted = bench.scores(base), base["counted_tasks"]
old, bench.rows = bench.rows, []
for r in old:
    score, transfer = bench.scores(r)
    kept = Genome.from_dict(r["genome"]).kept
    new = bench.add(r["method"], r["remove_fraction"], kept, score, transfer, seconds=r["seconds"],
                    heldout_seconds=r["heldout_seconds"])
    for k, v in r.items():
        new.setdefault(k, v)
save()

# 3. the full search (its anytime curve's baseline marks are filled in at the merge) and seeds-only
Q.SEARCH_ROWS = (("gptailor", settings["gptailor"]),)
Q.gptailor_rows(bench, evaluator, transfer_ev, family_part, 0.25, args.runs_dir, args, [])
save()
print("row gptailor", flush=True)
fraction_config = Q.run_config(family_part, args, remove_fraction=0.25)
n_keep = family.n_layers - 8
space = search_space(fraction_config, family, n_keep)
Q.seeds_only_row(bench, evaluator, transfer_ev, space, fraction_config, 0.25, 8, stitcher, tokenizer)
save()
print("done", flush=True)
