"""Merge the other workers' rows (p3_search_rows.py, p4_uniform.py) into quality.py's JSON before `quality.py --resume`
assembles the table. The full search's anytime curve gets the baseline marks that quality.anytime() adds
from the baseline rows (the worker ran before those rows existed), in its row and in the run folder."""
import json
import sys
from pathlib import Path

sys.path.insert(0, "/work/bench/benchmarks")
A = Path("/work/sm-full/quality-smollm2.json")
B = Path("/work/sm-full/quality-smollm2-searches.json")
C = Path("/work/sm-full/quality-smollm2-uniform.json")
RUN = Path("/work/sm-out/runs/remove0.25-gptailor")
BASELINE_METHODS = ("reverse", "shortgpt", "angular", "greedy-ppl", "laco")

a, b, c = json.loads(A.read_text()), json.loads(B.read_text()), json.loads(C.read_text())
have = {r["method"] for r in a["rows"]}
assert all(m in have for m in BASELINE_METHODS), sorted(have)
assert b["git"] == a["git"] == c["git"], (a["git"], b["git"], c["git"])
rows = {r["method"]: r for r in a["rows"]}
marks = [{"method": m, "seconds": rows[m]["seconds"], "retention_sym": rows[m]["retention_sym"]}
         for m in BASELINE_METHODS if rows[m].get("retention_sym") is not None]
for r in c["rows"] + b["rows"]:
    if r["method"] in have:
        raise SystemExit(f"{r['method']} is in both files")
    if r["method"] == "gptailor":
        r["anytime"]["baselines"] = marks
        (RUN / "anytime.json").write_text(json.dumps(r["anytime"], indent=2, sort_keys=True))
    a["rows"].append(r)
A.write_text(json.dumps(a, indent=1))
print("merged", [r["method"] for r in c["rows"] + b["rows"]], "into", A)
