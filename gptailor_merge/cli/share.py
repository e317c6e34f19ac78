"""The CLI's sharing commands (report, push), registered on import by `cli.app.main`.

Thin: parse flags, call `report.write_report` or `hub.push_to_hub`, print where the result is.
The token is passed through, never printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptailor_merge.cli.registry import command


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run folder written by `optimize`")


@command("report", "write RUN_DIR/report.md with layer-map, Pareto-front and search-trace figures", _report_args)
def cmd_report(args: argparse.Namespace) -> int:
    from gptailor_merge.share.report import write_report

    out = write_report(args.run_dir)
    print(f"wrote {out} and figures in {out.parent / 'figures'}")
    return 0


def _push_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path,
                   help="a run folder (its best.yaml is materialized), a recipe YAML, or a model folder (uploaded as is)")
    p.add_argument("repo_id", help="Hub repo id, e.g. your-name/llama-2-13b-pruned")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", help="upload to this branch (created if missing) instead of main")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN, else the cached `hf auth login`); "
                                   "prefer those, a flag stays in the shell history")
    p.add_argument("--dry-run", type=Path, metavar="OUT_DIR", dest="dry_run",
                   help="write exactly the folder that would be uploaded to OUT_DIR and upload nothing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a --dry-run folder written by an earlier push (never any other folder)")
    p.add_argument("--model-id", action="append", default=[], metavar="NAME=ORG/REPO",
                   help="the Hub id of a local family member (by its family name) for the card's base_model "
                        "and the published recipe; repeatable. Local members not given appear by name")


def _model_ids(pairs: list[str]) -> dict[str, str]:
    from gptailor_merge.core.errors import HubError

    out = {}
    for pair in pairs:
        name, sep, repo = pair.partition("=")
        if not sep or not name or not repo:
            raise HubError(f"--model-id {pair!r} is not NAME=ORG/REPO, e.g. --model-id base=meta-llama/Llama-2-7b-hf")
        out[name] = repo
    return out


@command("push", "upload a tailored model with its model card and recipe to the Hugging Face Hub", _push_args)
def cmd_push(args: argparse.Namespace) -> int:
    from gptailor_merge.share.hub import push_to_hub

    result = push_to_hub(args.source, args.repo_id, private=args.private, revision=args.revision,
                         token=args.token, dry_run_dir=args.dry_run, overwrite=args.overwrite,
                         model_ids=_model_ids(args.model_id))
    if args.dry_run is None:
        print(f"pushed to {result}")
        return 0
    print(f"dry run: wrote {result} (nothing uploaded); it holds:")
    from gptailor_merge.core.outputs import MARKER

    for path in sorted(Path(result).rglob("*")):
        if path.is_file() and path.name != MARKER:
            print(f"  {path.relative_to(result)}  ({path.stat().st_size:,} bytes)")
    return 0
