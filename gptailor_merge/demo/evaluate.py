"""The specialisation table of a demo family: held-out perplexity of every member per domain.

In: a `DemoFamily` on disk (members loaded with `from_pretrained`, as users will). Out: plain
dicts and a text table for the log. The check that each fine-tune specialises lives here too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gptailor_merge.demo.layout import DemoFamily
from gptailor_merge.demo.train import perplexity

Table = dict[str, dict[str, float]]  # member -> domain -> perplexity


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
