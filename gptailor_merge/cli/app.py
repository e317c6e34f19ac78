"""Command line: `python -m gptailor_merge {optimize, materialize, evaluate, prune, report, push, demo}`.

Thin: each command parses flags, builds its inputs and calls one library function. The only module
that prints and configures logging handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gptailor_merge.cli.registry import COMMANDS, command
from gptailor_merge.core.errors import GptailorError

logger = logging.getLogger("gptailor_merge")


# ---- materialize --------------------------------------------------------------------------------
def _materialize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", type=Path, help="a mergekit recipe YAML written by gptailor-merge (or by hand)")
    p.add_argument("out_dir", type=Path, help="output model folder (config, safetensors, tokenizer)")
    p.add_argument("--backend", choices=("mergekit", "stitch"), default="mergekit",
                   help="mergekit: stock run_merge (reference); stitch: in-memory stitcher, then save")
    p.add_argument("--device", default="cpu", help="where tensors are merged: cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    from gptailor_merge.cli.repair import add_materialize_repair_args

    add_materialize_repair_args(p)


@command("materialize", "write the model a recipe describes, as a loadable Hugging Face folder",
         _materialize_args)
def cmd_materialize(args: argparse.Namespace) -> int:
    from gptailor_merge.materialize.mergekit_backend import materialize_recipe

    start = time.perf_counter()
    if args.repair:
        from gptailor_merge.cli.repair import materialize_repair

        out = materialize_repair(args)
        print(f"wrote {out} (stitch backend, repaired: {args.repair}; {time.perf_counter() - start:.1f}s)")
        return 0
    out = materialize_recipe(args.recipe, args.out_dir, backend=args.backend, device=args.device,
                             overwrite=args.overwrite, quiet=args.quiet)
    print(f"wrote {out} ({args.backend} backend, {time.perf_counter() - start:.1f}s)")
    return 0


# ---- demo ---------------------------------------------------------------------------------------
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("build", "path"), help="build: build (or reuse) the demo family; path: print its folder")
    p.add_argument("--out", type=Path, default=None, help="family folder (default: the user cache)")
    p.add_argument("--preset", choices=("default", "tiny"), default="default", help="model size preset")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole build")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete family is cached")


@command("demo", "build the embedded demo family (a base + prose/code/math fine-tunes, trained offline)",
         _demo_args)
def cmd_demo(args: argparse.Namespace) -> int:
    from gptailor_merge.demo import build_demo_family, default_cache_dir

    if args.action == "path":
        print(args.out or default_cache_dir() / f"demo-{args.preset}-seed{args.seed}")
        return 0
    start = time.perf_counter()
    family = build_demo_family(args.out, preset=args.preset, seed=args.seed, force=args.force,
                               progress=not args.quiet)
    print(f"demo family at {family.root} ({time.perf_counter() - start:.0f}s)")
    return 0


# ---- main ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gptailor_merge",
        description="Prune an LLM by cutting and stitching layers across a family of its fine-tunes "
        "(GPTailor). Every result is a mergekit recipe.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("gptailor_merge")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _register_command_modules() -> None:
    """Import the command modules; each registers its commands with `@command` on import."""
    from gptailor_merge.cli import optimize, prune, share  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    _register_command_modules()

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    _setup_logging(args.verbose, args.quiet)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.run(args) or 0)
    except GptailorError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # a read-only file or folder that no check above foresaw
        print(f"error: PermissionError: cannot write '{exc.filename}' ({exc.strerror}); choose a location "
              "you can write, or fix its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
