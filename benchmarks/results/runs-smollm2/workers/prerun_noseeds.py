"""Run quality.py's gptailor-no-seeds SmolLM2 search in its run folder ahead of quality.py (same config), so that
quality.py --resume replays its journal instead of running it after no-seeds."""
import sys
from pathlib import Path

sys.path.insert(0, "/work/bench/benchmarks")
sys.path.insert(0, "/work/bench")
import quality as Q

from gptailor_merge.run.optimize import optimize

args = Q.parse_args(["--family", "smollm2", "--remove", "0.25", "--trials", "60", "--max-examples", "27",
                     "--heldout-examples", "128", "--calibration-texts", "8", "--anytime-points", "1", "--threads", "1",
                     "--runs-dir", "/work/sm-out/runs", "--json", "/work/sm-full/unused.json", "--resume"])
Q.setup_torch(1)
settings = dict(Q.SEARCH_ROWS)["gptailor-no-seeds"]
out = Path("/work/sm-out/runs/remove0.25-gptailor-no-seeds")
config = Q.run_config(Q.family_config(args), args, remove_fraction=0.25, search=settings, out_dir=str(out))
resume = out if (out / "journal.jsonl").is_file() else None
optimize(config, progress=False, resume=resume, heldout=False)
print("done", flush=True)
