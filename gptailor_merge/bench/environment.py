"""What every benchmark result records about where it ran: code version, hardware, libraries;
and how it is written (atomically, so a killed run leaves the previous file whole)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


RESULTS_DIR = "benchmarks/results"
"""Where benchmark outputs are committed: a run's own untracked output there is data, not code, so
it does not mark the run's checkout dirty (any other change, tracked or untracked, does)."""


def git_sha(root: Path = ROOT) -> dict:
    """{"sha", "dirty"} of the checkout the code runs from ("unknown" outside a git checkout)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    changes = git("status", "--porcelain", "--", ".", f":(exclude){RESULTS_DIR}")
    return {"sha": git("rev-parse", "HEAD") or "unknown", "dirty": bool(changes)}


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


def add_device_args(p: Any) -> None:
    """--device, --dtype and --threads, the same in every benchmark (`resolve_dtype` after parsing)."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default bfloat16 on cuda, float32 on cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def resolve_dtype(args: Any) -> Any:
    """`args` with --dtype filled in from --device."""
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return args


def setup_torch(threads: int | None) -> None:
    """Every benchmark's start: offline Hub (nothing is downloaded mid-benchmark), the torch thread
    count, transformers' bars and chatter off. A benchmark's start, not its import: importing a
    bench module changes no process setting."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    if threads:
        torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def environment(args: Any = None) -> dict:
    """The record every result JSON carries: its arguments, code version and hardware."""
    out = {"git": git_sha(), "hardware": hardware()}
    if args is not None:
        out["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return out


SMOLLM2_DIR = "smollm2-family"  # under $GPTAILOR_CACHE; benchmarks/smollm2_family.py builds it
SMOLLM2_MARKER = "SMOLLM2_FAMILY.json"  # its manifest, written last


def smollm2_root() -> Path:
    """Where the SmolLM2 family of `--family smollm2` lives (built or not)."""
    from gptailor_merge.demo.layout import default_cache_dir

    return default_cache_dir() / SMOLLM2_DIR


def _manifest(args: dict | None) -> tuple[Path, dict | None]:
    """The build manifest of the family a benchmark ran on (demo or SmolLM2, by its `--family` /
    `--demo-preset`), or None where it cannot be read."""
    from gptailor_merge.demo.layout import MARKER, default_family_dir

    args = args or {}
    if args.get("family", "demo") == "smollm2":
        marker = smollm2_root() / SMOLLM2_MARKER
    else:
        marker = default_family_dir(args.get("demo_preset") or "default", 0) / MARKER
    try:
        return marker, json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return marker, None


def corpus_digests(args: dict | None) -> dict[str, str]:
    """Each corpus's digest from the family's build manifest: equal digests, equal corpora on any machine."""
    marker, manifest = _manifest(args)
    if manifest is None:
        return {"unrecorded": f"no family manifest at {marker}"}
    digests = {name: s["corpus_sha256"] for name, s in manifest.get("sources", {}).items()
               if isinstance(s, dict) and "corpus_sha256" in s}
    return digests or {"unrecorded": f"{marker} predates corpus digests (an older build)"}


def family_build(args: dict | None) -> dict:
    """The build's version and its held-out perplexity table, from the manifest. Equal corpora do
    not make equal weights: training on another CPU (its kernels, its thread count) gives other
    weights, so two results are of one family only where these numbers match too."""
    marker, manifest = _manifest(args)
    if manifest is None:
        return {"unrecorded": f"no family manifest at {marker}"}
    return {k: manifest.get(k) for k in ("build_version", "torch_threads", "specialisation_heldout_ppl")}


def write_result(path: Path, result: dict) -> None:
    """The result JSON, written atomically (a killed run leaves the previous file whole). Adds the
    family's corpus digests and build record to `result` itself unless it carries them, so what a
    benchmark returns is what it wrote."""
    from gptailor_merge.core.atomic import write_json_atomic

    if "corpus_sha256" not in result:
        result["corpus_sha256"] = corpus_digests(result.get("args"))
    if "family_build" not in result:
        result["family_build"] = family_build(result.get("args"))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
