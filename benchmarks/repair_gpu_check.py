"""GPU check of the linear repair: the maps fitted on CUDA equal those fitted on CPU (float tolerance).

Builds a tiny random Llama family on disk (seconds), repairs one genome with two removed runs on
CPU and on CUDA (fp32 models, float64 fits) and writes the max |difference| of the maps, the maps'
scale and both fits' errors as JSON. Without CUDA it fits twice on CPU (a determinism check) and
says so. Needs torch, transformers, mergekit, nevergrad and this repository; < 2 minutes.

    PYTHONPATH=. python benchmarks/repair_gpu_check.py    # -> $OUT/repair_gpu_check.json (else ./)
    PYTHONPATH=. python benchmarks/repair_gpu_check.py --json out.json   # (or with the package installed)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = "the cat dog sat ran on mat log fox jumps over lazy quick brown".split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="output JSON (default $OUT/repair_gpu_check.json, else ./)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--texts", type=int, default=48)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="pass if max |T_cuda - T_cpu| <= this x max(1, largest |T| entry)")
    args = parser.parse_args(argv)
    out = args.json or Path(os.environ.get("OUT", ".")) / "repair_gpu_check.json"

    import torch

    from gptailor_merge.bench.environment import git_sha, write_result
    from gptailor_merge.core.genome import Genome
    from gptailor_merge.demo.synthetic import make_synthetic_family
    from gptailor_merge.family.family import Family
    from gptailor_merge.repair.fit import repair_model

    start = time.perf_counter()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(args.texts)]
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="repair_gpu_check.") as tmp:
        base, cands = make_synthetic_family(Path(tmp) / "fam", n_layers=args.layers, hidden=args.hidden, seed=2)
        family = Family.load(base, cands)
        n = args.layers
        sources = [(), (0,), (), (1, 2), (), (), (2,), ()][:n] + [()] * max(0, n - 8)
        genome = Genome.from_choices(n, 3, [2, n - 3, n - 2], sources)
        fits = {}
        for device in ("cpu", "cuda" if cuda else "cpu"):
            t0 = time.perf_counter()
            _, info = repair_model(family, genome, texts, device=device, batch_size=8, max_length=64)
            key = device if device not in fits else f"{device}_again"
            fits[key] = (info, round(time.perf_counter() - t0, 2))
    (a, _), (b, _) = list(fits.values())
    diffs = {str(i): float((a.maps[i] - b.maps[i].cpu()).abs().max()) for i in a.maps}
    max_diff = max(diffs.values())
    scale = max(float(t.abs().max()) for t in a.maps.values())
    result = {
        "benchmark": "repair_gpu_check",
        "git": git_sha(),
        "hardware": {"cuda": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
                     "python": platform.python_version()},
        "compared": list(fits),
        "genome_removed": list(genome.removed),
        "maps": sorted(a.maps),
        "max_abs_diff_per_map": diffs,
        "max_abs_diff": max_diff,
        "max_abs_map_entry": scale,
        "max_diff_relative_to_largest_entry": max_diff / max(scale, 1e-30),
        "fits": {k: {"seconds": s, **info.to_json()} for k, (info, s) in fits.items()},
        "tolerance": args.tolerance,
        "passed": max_diff <= args.tolerance * max(scale, 1.0),
        "note": None if cuda else "no CUDA here: CPU fitted twice (determinism), not CPU against GPU",
        "wall_seconds": round(time.perf_counter() - start, 1),
        "corpus_sha256": {"synthetic": "random weights and generated texts; no corpus"},
    }
    write_result(out, result)
    print(f"{' vs '.join(fits)}: max |T diff| = {max_diff:.3e} over maps {sorted(a.maps)} "
          f"(largest entry {result['max_abs_map_entry']:.3f}); {'PASS' if result['passed'] else 'FAIL'}; wrote {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
