"""The specialisation tables of a demo family: held-out perplexity and task accuracy of every
member per domain.

In: a `DemoFamily` on disk (members loaded with `from_pretrained`, as users will). Out: plain
dicts and text tables for the log. The checks that each fine-tune specialises and that the base
beats chance on every task live here too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gptailor_merge.demo.layout import DemoFamily
from gptailor_merge.demo.train import perplexity

Table = dict[str, dict[str, float]]  # member -> domain -> perplexity
AccTable = dict[str, dict[str, dict[str, float]]]  # member -> task -> {"acc", "n", "chance"}


def read_texts(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def specialisation_table(family: DemoFamily, split: str = "heldout") -> Table:
    """Perplexity of base and each candidate on each domain's `split` texts."""
    texts = {d: read_texts(family.text_file(d, split)) for d in family.domains}
    table: Table = {}
    for name, path in family.members.items():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        table[name] = {d: perplexity(model, tokenizer, texts[d]) for d in family.domains}
        del model
    return table


def specialisation_failures(table: Table) -> list[str]:
    """Why the table does not show specialisation (empty when every fine-tune specialises).

    A fine-tune specialises when it beats the base on its own domain and is worse than the base
    on at least one other domain.
    """
    problems = []
    base = table["base"]
    for member, row in table.items():
        if member == "base":
            continue
        if not row[member] < base[member]:
            problems.append(f"{member}: {row[member]:.2f} is not below base {base[member]:.2f} "
                            f"on {member}")
        if not any(row[d] > base[d] for d in row if d != member):
            problems.append(f"{member}: not worse than base on any other domain")
    return problems


def format_table(table: Table) -> str:
    domains = list(next(iter(table.values())))
    lines = ["member  " + "".join(f"{d:>10}" for d in domains)]
    lines += [f"{m:<8}" + "".join(f"{row[d]:>10.2f}" for d in domains) for m, row in table.items()]
    return "\n".join(lines)


def task_accuracy_table(family: DemoFamily, split: str = "heldout", *, max_length: int = 128,
                        members: Sequence[str] | None = None) -> AccTable:
    """Accuracy (sum of log-likelihood, as the search scores it) of base and each candidate (or
    of `members`) on each multiple-choice task's `split`, with n and the chance level."""
    from gptailor_merge.scoring import load_task
    from gptailor_merge.scoring.multiple_choice import multiple_choice

    tasks = {t: load_task(family.task_file(t, split)) for t in family.task_names}
    table: AccTable = {}
    for name, path in family.members.items():
        if members is not None and name not in members:
            continue
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        table[name] = {}
        for task_name, task in tasks.items():
            result = multiple_choice(model, tokenizer, task.examples(split), batch_size=32,
                                     max_length=max_length)
            table[name][task_name] = {"acc": result["acc"], "n": result["n"],
                                      "chance": task.chance}
        del model
    return table


def chance_margin(acc: float, n: int, chance: float) -> float:
    """How many binomial standard errors at chance, sqrt(c (1 - c) / n), `acc` is above `chance`."""
    return (acc - chance) / math.sqrt(chance * (1.0 - chance) / n)


def above_chance_failures(table: AccTable, z: float = 3.0) -> list[str]:
    """Tasks on which the base is not `z` standard errors above chance (empty when it is on all)."""
    return [f"base {task}: acc {r['acc']:.3f} (n={r['n']}) is {chance_margin(r['acc'], r['n'], r['chance']):.1f}"
            f" SE above chance {r['chance']:.2f}, not {z}"
            for task, r in table["base"].items()
            if chance_margin(r["acc"], r["n"], r["chance"]) < z]


def format_acc_table(table: AccTable) -> str:
    tasks = list(next(iter(table.values())))
    lines = ["member  " + "".join(f"{t:>16}" for t in tasks)]
    lines += [f"{m:<8}" + "".join(f"{row[t]['acc']:>11.3f} n={row[t]['n']:<3}" for t in tasks)
              for m, row in table.items()]
    return "\n".join(lines)
