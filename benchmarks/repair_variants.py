"""Repair variants (target, calibration texts, ridge) on the 25% genomes of a quality result.

A quick diagnostic, not a table: perplexity only (the first 48 held-out texts of each text task and
48 transfer texts per source), retention as exp(mean log ratio) against the dense base. It is how the
defaults (target `self`, 128 texts) were chosen, on examples the quality tables also report:

    python benchmarks/repair_variants.py smollm2 [OUT.json]
"""
import json
import math
import sys
import time
from pathlib import Path

from gptailor_merge.baselines import calibration_texts
from gptailor_merge.bench import quality as Q
from gptailor_merge.bench.repair_rows import genome_of
from gptailor_merge.core.genome import Genome
from gptailor_merge.repair.fit import repair_model
from gptailor_merge.scoring import evaluate_model, text_tasks

fam_name = sys.argv[1] if len(sys.argv) > 1 else "smollm2"
args = Q.parse_args(["--family", fam_name, "--threads", "1", "--transfer-texts", "48"])
Q.env.setup_torch(1)
ctx = Q.setup(args)
family, stitcher, tok, transfer = ctx.family, ctx.stitcher, ctx.tokenizer, ctx.transfer
text = text_tasks(ctx.tasks)
results = Path(__file__).resolve().parent / "results"
res = json.loads((results / ("quality-smollm2.json" if fam_name == "smollm2" else "quality-demo-25.json")).read_text())
out_path = Path(sys.argv[2]) if len(sys.argv) > 2 else results / f"repair-variants-{fam_name}.json"
rows = {r["method"]: r for r in res["rows"] if r.get("remove_fraction") in (0.25, 0, 0.0, None)}
N = 48
def ppl(model):
    s = evaluate_model(model, tok, text, split="heldout", n_examples=N, batch_size=16, max_length=256)
    t = evaluate_model(model, tok, transfer, split="heldout", batch_size=16, max_length=256)
    return {**{k: v.metrics["nll"] for k, v in s.tasks.items()}, **{k: v.metrics["nll"] for k, v in t.tasks.items()}}
base = ppl(stitcher.build(Genome.base_only(family.n_layers, family.n_candidates)))
def rep(d):
    fam_t = [base[k] - d[k] for k in base if not k.startswith("transfer")]
    tr_t = [base[k] - d[k] for k in base if k.startswith("transfer")]
    return {"text": math.exp(sum(fam_t)/len(fam_t)), "transfer": math.exp(sum(tr_t)/len(tr_t)),
            **{k: round(math.exp(d[k]), 1) for k in d}}
genomes = {m: genome_of(rows[m], family) for m in ("shortgpt", "greedy-ppl", "gptailor")}
variants = [("none", None), ("base/8/1e-4", ("base", 8, 1e-4)), ("self/8/1e-4", ("self", 8, 1e-4)),
            ("self/64/1e-4", ("self", 64, 1e-4)), ("base/64/1e-4", ("base", 64, 1e-4)),
            ("self/64/1e-2", ("self", 64, 1e-2)), ("self/64/1e-1", ("self", 64, 1e-1))]
out = {}
for gname, g in genomes.items():
    for vname, v in variants:
        t0 = time.time()
        if v is None:
            model, info = stitcher.build(g), None
        else:
            target, n, ridge = v
            texts = calibration_texts(text, n)
            model, info = repair_model(family, g, texts, ridge=ridge, target=target, stitcher=stitcher, tokenizer=tok)
        r = rep(ppl(model))
        r["fits"] = info and [(f.n_tokens, round(f.error_unrepaired, 3), round(f.error_repaired, 3)) for f in info.fits]
        out[f"{gname} {vname}"] = r
        print(f"{gname:10s} {vname:14s} text {r['text']:.3f} transfer {r['transfer']:.3f} {time.time()-t0:.0f}s",
              {k: v for k, v in r.items() if k not in ('text', 'transfer')}, flush=True)
        out_path.write_text(json.dumps(out, indent=1) + "\n")
