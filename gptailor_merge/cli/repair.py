"""The `--repair` flags shared by materialize, prune and optimize (no command of its own).

Thin: declares the flags and turns them into `repair.folder.RepairSettings`; the work is in
`gptailor_merge.repair.fit` (the fit) and `gptailor_merge.repair.folder` (the folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPAIR_HELP = ("repair the cuts without training (ReplaceMe-style): per removed run, a linear map fitted on "
               "search-split text is fused into the down projection of the kept layer before it")


def add_repair_choice_flags(p: argparse.ArgumentParser) -> None:
    """--repair-sources / --repair-objective / --repair-balance: the RepairSettings fields a user may change."""
    p.add_argument("--repair-sources", choices=("text", "all"), default=None,
                   help="repair: calibrate on the text tasks (text) or also on each multiple-choice context with "
                        "its gold continuation (all, the default)")
    p.add_argument("--repair-objective", choices=("lstsq", "cosine"), default=None,
                   help="repair: least squares (lstsq) or ReplaceMe's cosine distance, L-BFGS from the "
                        "least-squares map (cosine, the default; 2-5x the fit time)")
    p.add_argument("--repair-balance", choices=("examples", "tokens"), default=None,
                   help="repair: every calibration token once (examples), or each calibration task the same "
                        "total weight in the fit (tokens, the default: short multiple-choice contexts weigh "
                        "as much as long texts)")


def repair_options(args: argparse.Namespace) -> dict:
    """The RepairSettings fields the flags set (none: the defaults)."""
    given = {"sources": getattr(args, "repair_sources", None), "objective": getattr(args, "repair_objective", None),
             "balance": getattr(args, "repair_balance", None)}
    return {k: v for k, v in given.items() if v is not None}


def add_repair_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repair", choices=("linear",), help=REPAIR_HELP)
    p.add_argument("--ridge", type=float, default=None,
                   help="repair: ridge relative to mean diag(M^T M) (default 1e-4)")
    add_repair_choice_flags(p)


def add_materialize_repair_args(p: argparse.ArgumentParser) -> None:
    add_repair_flag(p)
    p.add_argument("--repair-settings", type=Path, metavar="JSON",
                   help="repair: a repaired folder's repair.json; rebuilds that folder's weights bitwise "
                        "(on the same device)")
    p.add_argument("--calibration", nargs="+", metavar="TASK",
                   help="repair: text tasks to fit on (search split), when no --repair-settings")
    p.add_argument("--n-calibration", type=int, default=None,
                   help="repair: search-split texts per calibration task (default 128)")


def materialize_repair(args: argparse.Namespace) -> Path:
    """`materialize RECIPE OUT --repair linear ...` (settings from a file, or from flags)."""
    import logging

    from gptailor_merge.core.errors import ConfigError
    from gptailor_merge.repair.folder import RepairSettings, repair_recipe, settings_for_recipe

    if args.repair_settings is not None:
        given = [f for f, v in (("--calibration", args.calibration), ("--n-calibration", args.n_calibration),
                                ("--ridge", args.ridge), ("--repair-sources", args.repair_sources),
                                ("--repair-objective", args.repair_objective),
                                ("--repair-balance", args.repair_balance)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} cannot be combined with --repair-settings, which fixes the "
                              "calibration; drop them, or drop --repair-settings to fit anew")
        settings = RepairSettings.load(args.repair_settings)
        if settings.device != args.device:
            logging.getLogger(__name__).warning(
                "the repair was fitted on %s and is refitted on %s: the maps agree to float tolerance, not "
                "bitwise; pass --device %s to reproduce it exactly", settings.device, args.device, settings.device)
            settings = settings.model_copy(update={"device": args.device})
    else:
        if not args.calibration:
            raise ConfigError("--repair linear needs calibration text: pass --calibration TASK [TASK ...] "
                              "(text tasks; their search split is used) or --repair-settings repair.json")
        fields = {"device": args.device, **repair_options(args)}
        if args.n_calibration is not None:
            fields["n_examples_per_task"] = args.n_calibration
        if args.ridge is not None:
            fields["ridge"] = args.ridge
        settings = settings_for_recipe(args.recipe, args.calibration, **fields)
    return repair_recipe(args.recipe, args.out_dir, settings, overwrite=args.overwrite)
