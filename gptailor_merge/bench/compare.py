"""Paired intervals between any two rows of a `quality.py` result, from its stored per-example values.

    python benchmarks/compare.py benchmarks/results/quality-demo-25.json gptailor \
        --against uniform-merge gptailor-random greedy-ppl [--remove 0.25] [--json OUT]

`quality.py` adds the intervals its issue asks for (against the best baseline, seeds-only and the
unrepaired row); this recomputes the same paired bootstrap (`scoring.intervals.paired_bootstrap`,
same resample for both rows and the dense base) for any other pair, without scoring anything again.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from gptailor_merge.bench.environment import write_result
from gptailor_merge.scoring.intervals import interval_text, paired_bootstrap, skill_changes

N_BOOT = 2000


def _row(result: dict, method: str, fraction: float | None) -> dict:
    rows = [r for r in result["rows"] if r["method"] == method
            and (fraction is None or not r["remove_fraction"] or r["remove_fraction"] == fraction)]
    if not rows:
        names = sorted({r["method"] for r in result["rows"]})
        raise SystemExit(f"no row {method!r}{'' if fraction is None else f' at --remove {fraction:g}'}"
                         f" in this result; rows: {', '.join(names)}")
    if len(rows) > 1:
        fractions = sorted({r["remove_fraction"] for r in rows})
        raise SystemExit(f"{method!r} has rows at several fractions {fractions}; give --remove")
    if "per_example" not in rows[0]:
        raise SystemExit(f"row {method!r} has no per-example values (failed or written by an old "
                         "quality.py); it cannot be compared")
    return rows[0]


def compare(result: dict, a: str, b: str, fraction: float | None = None, seed: int = 0) -> dict:
    """{"heldout": interval, "transfer": interval, "skills": per counted multiple-choice task, the
    held-out accuracy change with its paired SE} of row `a` minus row `b` (> 0: `a` is better)."""
    ra, rb, base = _row(result, a, fraction), _row(result, b, fraction), _row(result, "member-base", None)
    from gptailor_merge.bench.quality import (  # the one reader of a row's stored scores
        score_of,
        stored_tasks,
    )

    tasks, transfer = stored_tasks(result)
    transfer_names = [t.name for t in transfer]
    metric = result.get("args", {}).get("metric", "acc")

    def scores(row: dict):
        return (score_of(row["tasks"], row["per_example"], None),
                score_of(row["transfer"]["tasks"], row["transfer_per_example"], None))

    (sa, ta), (sb, tb), (s0, t0) = scores(ra), scores(rb), scores(base)
    return {"a": a, "b": b, "remove_fraction": ra["remove_fraction"],
            "heldout": paired_bootstrap(sa, sb, s0, tasks, result["counted_tasks"], metric=metric,
                                        n_boot=N_BOOT, seed=seed),
            "transfer": paired_bootstrap(ta, tb, t0, transfer, transfer_names, n_boot=N_BOOT,
                                         seed=seed),
            "skills": skill_changes(sa, sb, tasks, result["counted_tasks"], metric=metric)}


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("result", type=Path, help="a quality.py JSON")
    p.add_argument("row", help="the row to judge, e.g. gptailor")
    p.add_argument("--against", nargs="+", required=True, help="rows to compare it with")
    p.add_argument("--remove", type=float, default=None, help="the removal fraction (when several)")
    p.add_argument("--json", type=Path, default=None, help="also write the intervals here")
    args = p.parse_args(argv)
    if not args.result.is_file():
        p.error(f"{args.result} does not exist; give a JSON written by benchmarks/quality.py")
    result = json.loads(args.result.read_text())
    out = [compare(result, args.row, other, args.remove) for other in args.against]
    print(f"paired bootstrap 95% intervals ({N_BOOT} resamples) of the difference in mean log "
          f"ratio, {args.row} minus each row; > 0 means {args.row} is better\n")
    print("| against | held-out | transfer | multiple-choice change (paired SE; * fell by more than it) |\n"
          "|---|---|---|---|")
    for c in out:
        skills = ", ".join(f"{k['task']} {k['diff']:+.3f} ({k['se']:.3f}){'*' if k['fell'] else ''}"
                           for k in c["skills"])
        print(f"| {c['b']} | {interval_text(c['heldout'])} | {interval_text(c['transfer'])} | {skills} |")
    if args.json:
        write_result(args.json, {"benchmark": "compare", "from": str(args.result), "row": args.row,
                                 "comparisons": out,
                                 "corpus_sha256": result.get("corpus_sha256", {"unrecorded": str(args.result)})})
    return out


if __name__ == "__main__":
    main()
