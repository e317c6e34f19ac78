"""The CLI's `prune` command: one single-model pruning baseline -> a mergekit recipe (or, for
LaCo, a model folder). Registered on import by `cli.app.main`; the work is `run.prune.prune`."""

from __future__ import annotations

import argparse
from pathlib import Path

from gptailor_merge.cli.registry import command

_EPILOG = """methods (calibrated on the base model, search split of the calibration tasks only):
  reverse     drop the layers just below the final one (L=12, remove 3 -> 8, 9, 10)
  shortgpt    drop the lowest Block Influence 1 - cos(layer input, output), mean over all tokens
  angular     drop the contiguous block whose input and output are closest in angle
              (arccos(cos)/pi at each text's last token, or --angular-tokens all)
  greedy-ppl  remove one layer at a time, the one that raises calibration perplexity least
  laco        LaCo layer collapse: merge rear layers' projection weights into a prior one
              (theta_l + sum_k (theta_{l+k} - theta_l), its norms kept) while the final hidden
              states keep a cosine similarity above --laco-threshold; where that threshold cannot
              reach the target it is swept down (then I, then C), as the row's details say.
              mergekit recipes cannot express a layer plus other layers' deltas, so LaCo runs in memory and --out is a MODEL FOLDER (config, safetensors,
              tokenizer) holding also laco_removal_recipe.yaml: its removal set as a passthrough
              recipe, which keeps the base's own layers and so only approximates LaCo's model.
Every other method writes --out as a recipe YAML that stock `mergekit-yaml` runs."""


def _prune_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _EPILOG
    p.add_argument("--method", required=True,
                   help="reverse, shortgpt, angular, greedy-ppl (or greedy_ppl), laco")
    p.add_argument("--family", required=True,
                   help="'demo' (the embedded demo family) or a run config YAML (family, tasks, eval)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--layers", type=int, help="layers to keep (default: the config's target)")
    target.add_argument("--remove-fraction", type=float, help="fraction of layers to remove, e.g. 0.25")
    p.add_argument("--out", type=Path, required=True,
                   help="recipe YAML to write (a model folder for laco)")
    p.add_argument("--calibration", nargs="+", metavar="TASK",
                   help="text tasks to calibrate on (default: every text task of the config; the "
                        "demo's ppl_* tasks)")
    p.add_argument("--n-calibration", type=int, default=32,
                   help="search-split examples per calibration task (default 32)")
    p.add_argument("--demo-preset", choices=("default", "tiny"), help="demo family preset")
    p.add_argument("--device", help="cpu or cuda (default: the config's eval.device)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--angular-tokens", choices=("last", "all"), default="last",
                   help="angular: compare each text's last token (Gromov et al.) or all tokens")
    p.add_argument("--laco-threshold", type=float, default=0.65, help="laco: similarity threshold T")
    p.add_argument("--laco-merge-layers", type=int, default=3,
                   help="laco: rear layers merged per collapse (the paper's C - 1)")
    p.add_argument("--laco-interval", type=int, default=2, help="laco: step down after a collapse (I)")
    p.add_argument("--laco-lowest", type=int, default=1, help="laco: lowest layer that absorbs others (H)")
    from gptailor_merge.cli.repair import add_repair_flag

    add_repair_flag(p)
    p.add_argument("--repair-texts", type=int, default=None, metavar="N",
                   help="repair: search-split texts per calibration task to fit on (default 128; the "
                        "map has hidden_size^2 parameters, so it needs more text than a baseline)")
    p.add_argument("--keep-repair", action="store_true",
                   help="repair: keep the repaired folder even where it does not beat the recipe's model on "
                        "the validation split (the comparison is still printed)")
    p.add_argument("--repair-out", type=Path, metavar="DIR",
                   help="repair: the repaired model folder (default: OUT without suffix + '_repaired'); "
                        "fitted on the search split of the baseline's calibration tasks (--repair-texts per task)")


def _config(args: argparse.Namespace):
    from gptailor_merge.core.config import DEMO, RunConfig

    base = (RunConfig() if args.family == DEMO else RunConfig.load(args.family)).model_dump(mode="json")
    if args.layers is not None:
        base["target"] = {"layers": args.layers}
    if args.remove_fraction is not None:
        base["target"] = {"remove_fraction": args.remove_fraction}
    if args.demo_preset:
        base["family"]["demo_preset"] = args.demo_preset
    if args.device:
        base["eval"]["device"] = args.device
    config = RunConfig.from_dict(base, source=str(args.family))
    from gptailor_merge.core.config import check_device

    check_device(config.eval.device, "--device" if args.device else f"{args.family}: eval.device")
    return config


def _options(args: argparse.Namespace, method: str) -> dict:
    if method == "angular":
        return {"tokens": args.angular_tokens}
    if method == "laco":
        return {"threshold": args.laco_threshold, "merge_layers": args.laco_merge_layers,
                "interval": args.laco_interval, "lowest": args.laco_lowest}
    return {}


@command("prune", "prune the base model with a single-model baseline (ShortGPT, angular, ...) into "
         "a recipe", _prune_args)
def cmd_prune(args: argparse.Namespace) -> int:
    from gptailor_merge.baselines import canonical_name, get_baseline
    from gptailor_merge.cli.repair import repair_options
    from gptailor_merge.run.prune import prune

    get_baseline(args.method)  # a bad name fails before the config or family loads
    method = canonical_name(args.method)
    outcome = prune(_config(args), method, args.out, calibration=args.calibration,
                    n_calibration=args.n_calibration, options=_options(args, method),
                    overwrite=args.overwrite, progress=not args.quiet, repair=args.repair,
                    repair_out=args.repair_out, ridge=args.ridge,
                    repair_texts=args.repair_texts, keep_repair=args.keep_repair,
                    repair_options=repair_options(args))
    removed = outcome.result.removed
    kind = "model folder" if outcome.result.collapsed is not None else "recipe"
    print(f"{method}: removed layers {removed} of {outcome.n_layers} "
          f"(calibrated on {outcome.n_texts} texts of {', '.join(outcome.calibration_tasks)}, search split)")
    print(f"wrote {kind} {outcome.out}")
    if outcome.repaired is not None:
        print(f"wrote repaired model folder {outcome.repaired} ({args.repair} repair, the same calibration "
              f"tasks' search split): {outcome.repair_choice['message']}")
    elif outcome.repair_choice is not None:
        print(f"no repaired folder written: {outcome.repair_choice['message']}")
    return 0
