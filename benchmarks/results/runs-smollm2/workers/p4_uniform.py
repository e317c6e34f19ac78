"""Third step of the SmolLM2 all-held-out quality run (code 18c37b8): once quality.py has written the baseline
rows, stop it and score the uniform-merge row with quality.py's own function (quality.py writes that row only
after the seeds-only row, which p3_search_rows.py scores in parallel). Rows merge before `quality.py --resume`."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, "/work/bench/benchmarks")
sys.path.insert(0, "/work/bench")
import quality as Q  # noqa: E402

A = Path("/work/sm-full/quality-smollm2.json")
C = Path("/work/sm-full/quality-smollm2-uniform.json")
argv = ["--family", "smollm2", "--remove", "0.25", "--trials", "60", "--max-examples", "27",
        "--calibration-texts", "8", "--anytime-points", "1", "--threads", "1", "--skip-repair",
        "--runs-dir", "/work/sm-out/runs", "--json", str(C), "--resume"]
args = Q.parse_args(argv)
Q.setup_torch(1)
from transfer import transfer_tasks  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from gptailor_merge.core.genome import Genome  # noqa: E402
from gptailor_merge.materialize.stitch import Stitcher  # noqa: E402
from gptailor_merge.run.optimize import search_space  # noqa: E402
from gptailor_merge.run.resolve import load_tasks, resolve_family  # noqa: E402
from gptailor_merge.search.search import Evaluator  # noqa: E402


def a_rows() -> dict:
    return {r["method"]: r for r in json.loads(A.read_text())["rows"]} if A.is_file() else {}


while not all(m in a_rows() for m in Q.BASELINE_METHODS):
    time.sleep(20)
for pid in subprocess.run(["pgrep", "-f", "benchmarks/quality.py --family smollm2"], capture_output=True,
                          text=True).stdout.split():
    os.kill(int(pid), signal.SIGTERM)
print("stopped quality.py after its baseline rows", flush=True)

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
bench = Q.Bench(family, tasks, transfer, s.metric, ev.heldout_examples, 1)
rows = a_rows()
base = rows["member-base"]
assert base["git_sha"] == bench.git, (base["git_sha"], bench.git)
bench.base, bench.counted = bench.scores(base), base["counted_tasks"]
# quality.baseline_rows' genomes of reused rows
genomes = {m: Genome.base_only(family.n_layers, family.n_candidates, rows[m]["removed"])
           for m in Q.BASELINE_METHODS
           if rows[m].get("removed") is not None and not rows[m].get("collapsed_layers")}
fraction_config = Q.run_config(family_part, args, remove_fraction=0.25)
space = search_space(fraction_config, family, family.n_layers - 8)
Q.uniform_merge_row(bench, evaluator, transfer_ev, space, fraction_config, genomes, 0.25)
C.write_text(json.dumps({"git": bench.git, "rows": bench.rows}))
print("done", flush=True)
