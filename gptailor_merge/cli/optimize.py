"""The CLI's main-job commands (optimize, evaluate), registered on import by `cli.app.main`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gptailor_merge.cli.registry import command


def _optimize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="run config YAML (default: the embedded demo family, 25%% removal)")
    p.add_argument("--resume", type=Path, help="continue a killed run from its folder; journaled trials are not re-run")
    p.add_argument("--out", help="run folder (default runs/<timestamp>)")
    p.add_argument("--trials", type=int, help="trial budget (search.n_trials)")
    p.add_argument("--time-budget", type=float, help="wall-clock budget of the search in seconds")
    target = p.add_mutually_exclusive_group()  # one target: argparse names both flags and exits 2
    target.add_argument("--layers", type=int, help="layers to keep (target.layers)")
    target.add_argument("--remove-fraction", type=float, help="fraction of layers to remove (target.remove_fraction)")
    p.add_argument("--optimizer", help="nevergrad optimizer name (search.optimizer)")
    p.add_argument("--methods", nargs="+", help="merge methods: task_arithmetic ties linear")
    p.add_argument("--tasks", nargs="+", help="task names or JSONL files")
    p.add_argument("--max-examples", type=int, help="examples per task at full fidelity")
    p.add_argument("--seed", type=int, help="search seed")
    p.add_argument("--demo-preset", choices=("default", "tiny"), help="demo family preset")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--workers", type=int, help="trials evaluated at once on Ray actors (search.workers; "
                                                 "needs pip install \"gptailor-merge[ray]\" when > 1)")
    p.add_argument("--ray-address", help="join this Ray cluster (search.ray_address); default: a local Ray instance")
    p.add_argument("--repair", choices=("linear",),
                   help="also write the best recipe repaired without training (best_model_repaired/, "
                        "its held-out row in summary.json): per removed run a fitted linear map fused "
                        "into the layer before it")
    from gptailor_merge.cli.repair import add_repair_choice_flags

    add_repair_choice_flags(p)


_FLAG_KEYS = (  # (flag, argparse dest, config key) of every override `config_from_args` applies
    ("--trials", "trials", "search.n_trials"), ("--time-budget", "time_budget", "search.time_budget_s"),
    ("--optimizer", "optimizer", "search.optimizer"), ("--methods", "methods", "search.merge_methods"),
    ("--max-examples", "max_examples", "search.max_examples"), ("--seed", "seed", "search.seed"),
    ("--layers", "layers", "target.layers"), ("--remove-fraction", "remove_fraction", "target.remove_fraction"),
    ("--tasks", "tasks", "tasks"), ("--out", "out", "out_dir"), ("--demo-preset", "demo_preset", "family.demo_preset"),
    ("--device", "device", "eval.device"), ("--workers", "workers", "search.workers"),
    ("--ray-address", "ray_address", "search.ray_address"),
)


def config_from_args(args: argparse.Namespace, default=None):
    """RunConfig from --config (else `default`, else the demo run) plus flag overrides (flags win)."""
    from gptailor_merge.core.config import RunConfig

    base = (RunConfig.load(args.config) if args.config else default or RunConfig()).model_dump(mode="json")
    flags: dict[str, str] = {}  # config key -> the flag that set it, so a refused value names the flag
    for flag, dest, key in _FLAG_KEYS:
        value = getattr(args, dest, None)
        if value is None or value == [] or value == "":
            continue
        section, _, name = key.rpartition(".")
        if key.startswith("target."):  # one target: the flag replaces the section
            base["target"] = {name: value}
        else:
            (base[section] if section else base)[name] = value
        flags[key] = flag
    return RunConfig.from_dict(base, source=str(args.config or "the command line"), flags=flags)


@command("optimize", "search for the best tailoring of a family (default: the embedded demo family)", _optimize_args)
def cmd_optimize(args: argparse.Namespace) -> int:
    from gptailor_merge.cli.repair import repair_options
    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.run.optimize import optimize

    saved = args.resume / "config.yaml" if args.resume else None
    # on --resume, flags apply to the run's own config: budgets and placement may change, the rest
    # must match (gptailor_merge/run/run_folder.py, README "Resuming a run")
    config = config_from_args(args, RunConfig.load(saved) if saved and saved.is_file() else None)
    outcome = optimize(config, resume=args.resume, progress=not args.quiet,
                       requested=config if args.resume else None,
                       workers=args.workers if args.resume else None,
                       ray_address=args.ray_address if args.resume else None, repair=args.repair,
                       repair_options=repair_options(args))
    print((outcome.run_dir / "summary.md").read_text())
    print(f"results in {outcome.run_dir}: best recipe {outcome.best_recipe}, summary.md, journal.jsonl, pareto/")
    if args.repair:
        print(f"repaired best model: {outcome.run_dir / 'best_model_repaired'}")
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", type=Path, help="a recipe YAML (materialized in memory) or a model folder")
    p.add_argument("--tasks", nargs="+", help="task names or JSONL files (default: the demo tasks)")
    p.add_argument("--split", choices=("search", "validation", "heldout"), default="heldout")
    p.add_argument("--limit", type=int, help="examples per task (a prefix of the seeded order)")
    p.add_argument("--json", type=Path, help="write {model, split, tasks} JSON here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)


@command("evaluate", "score a recipe or model folder on tasks (table, optional JSON)", _evaluate_args)
def cmd_evaluate(args: argparse.Namespace) -> int:
    from gptailor_merge.core.config import DEMO_TASKS
    from gptailor_merge.scoring import evaluate_model, load_model_folder, load_task, score_to_json

    specs = args.tasks or list(DEMO_TASKS)
    if not args.target.exists():  # before the tasks: a wrong path is the first thing to fix
        from gptailor_merge.core.errors import ConfigError

        raise ConfigError(f"evaluate: '{args.target}' does not exist; give a recipe (.yaml) or a "
                          "model folder (materialize writes one)")
    if not args.tasks and args.target.is_dir():
        from gptailor_merge.core.errors import TaskError

        raise TaskError(f"evaluate {args.target} needs --tasks: give task JSONL files, registered names or "
                        f"hf:/disk:/lm_eval: specs, or the demo's tasks by name ({' '.join(DEMO_TASKS)}; "
                        "a recipe without --tasks is scored on those)")
    from gptailor_merge.scoring import TASKS

    # the demo's task names work wherever they are suggested; names already registered (a demo
    # family of another preset, a task folder) keep their files
    named_demo = set(specs) & set(DEMO_TASKS)
    if not args.tasks or (named_demo and not set(DEMO_TASKS) & set(TASKS.names())):
        from gptailor_merge.demo import build_demo_family
        from gptailor_merge.scoring import register_task_dir

        register_task_dir(build_demo_family(progress=not args.quiet).root, replace=not args.tasks)
    from gptailor_merge.core.config import check_device
    from gptailor_merge.run.resolve import checked_task

    check_device(args.device, "--device")
    tasks = [checked_task(load_task, spec) for spec in specs]
    if args.target.is_dir():
        from gptailor_merge.family.family import check_model_folder

        check_model_folder(args.target)
        model, tokenizer = load_model_folder(args.target, device=args.device)
    else:
        from transformers import AutoTokenizer

        from gptailor_merge.family.family import Family
        from gptailor_merge.materialize.recipe import Recipe, recipe_family_refs, recipe_to_genome
        from gptailor_merge.materialize.stitch import Stitcher

        recipe = Recipe.load(args.target)
        refs = recipe_family_refs(recipe)
        family = Family.load(refs.base, refs.candidates)
        model = Stitcher(family, device=args.device, dtype=recipe.data.get("dtype") or "float32").build(
            recipe_to_genome(recipe, refs))
        tokenizer = AutoTokenizer.from_pretrained(family.base.path)
    score = evaluate_model(model, tokenizer, tasks, split=args.split, n_examples=args.limit,
                           batch_size=args.batch_size, max_length=args.max_length)
    print("| task | metric | value |\n|---|---|---|")
    for name, ts in score.tasks.items():
        for metric, value in ts.metrics.items():
            print(f"| {name} | {metric} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {metric} | {value} |")
    if args.json:
        args.json.write_text(json.dumps(score_to_json(score, str(args.target)), indent=2))
    return 0
