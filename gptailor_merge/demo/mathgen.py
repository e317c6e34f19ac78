"""Seeded arithmetic and word problems, the demo family's math corpus (no external source).

Each problem is one line `Q: <question> A: <number>`; the answer is always a non-negative int.
Pure Python: a `random.Random` in, (question, answer) pairs out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

_NAMES = ("Tom", "Anna", "Ravi", "Mia", "Lucas", "Sara", "Omar", "Lena", "Ken", "Zoe", "Ivan",
          "Maya", "Noah", "Ella", "Jin", "Ada")
_ITEMS = ("apples", "books", "coins", "marbles", "pencils", "stickers", "cards", "eggs",
          "shells", "stamps", "cookies", "oranges")

Problem = tuple[str, int]


def _add(r: random.Random) -> Problem:
    a, b = r.randint(2, 99), r.randint(2, 99)
    return f"What is {a} + {b}?", a + b


def _sub(r: random.Random) -> Problem:
    a, b = r.randint(10, 199), r.randint(1, 99)
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", a - b


def _mul(r: random.Random) -> Problem:
    a, b = r.randint(2, 19), r.randint(2, 12)
    return f"What is {a} * {b}?", a * b


def _two_step(r: random.Random) -> Problem:
    a, b, c = r.randint(2, 12), r.randint(2, 9), r.randint(1, 50)
    return f"What is {a} * {b} + {c}?", a * b + c


def _buys(r: random.Random) -> Problem:
    n, it, a, b = r.choice(_NAMES), r.choice(_ITEMS), r.randint(2, 60), r.randint(2, 40)
    return f"{n} has {a} {it} and buys {b} more. How many {it} does {n} have now?", a + b


def _gives(r: random.Random) -> Problem:
    n, m = r.sample(_NAMES, 2)
    it, a = r.choice(_ITEMS), r.randint(10, 90)
    b = r.randint(1, a - 1)
    return f"{n} had {a} {it} and gave {b} to {m}. How many {it} does {n} have left?", a - b


def _boxes(r: random.Random) -> Problem:
    it, a, b = r.choice(_ITEMS), r.randint(2, 15), r.randint(2, 12)
    return f"A box holds {a} {it}. How many {it} are in {b} boxes?", a * b


def _shares(r: random.Random) -> Problem:
    n, it, each, k = r.choice(_NAMES), r.choice(_ITEMS), r.randint(2, 12), r.randint(2, 9)
    return (f"{n} shares {each * k} {it} equally among {k} friends. "
            f"How many {it} does each friend get?", each)


def _pages(r: random.Random) -> Problem:
    n, a, b = r.choice(_NAMES), r.randint(3, 30), r.randint(2, 14)
    return f"{n} reads {a} pages a day. How many pages does {n} read in {b} days?", a * b


def _age(r: random.Random) -> Problem:
    n, a, b = r.choice(_NAMES), r.randint(3, 70), r.randint(2, 30)
    return f"{n} is {a} years old. How old will {n} be in {b} years?", a + b


def _train(r: random.Random) -> Problem:
    a, b = r.randint(20, 120), r.randint(2, 6)
    return f"A train travels {a} km per hour for {b} hours. How far does it travel in km?", a * b


def _solve(r: random.Random) -> Problem:
    a, x = r.randint(1, 60), r.randint(0, 60)
    return f"Solve for x: x + {a} = {x + a}.", x


def _price(r: random.Random) -> Problem:
    a, b = r.randint(2, 25), r.randint(2, 9)
    return f"A notebook costs {a} dollars. How many dollars do {b} notebooks cost?", a * b


GENERATORS: tuple[Callable[[random.Random], Problem], ...] = (
    _add, _sub, _mul, _two_step, _buys, _gives, _boxes, _shares, _pages, _age, _train, _solve,
    _price,
)


def format_problem(question: str, answer: int) -> str:
    return f"Q: {question} A: {answer}"


def unique_problems(rng: random.Random) -> Iterator[Problem]:
    """An endless stream of distinct problems (a repeat is skipped, never yielded twice)."""
    seen: set[str] = set()
    while True:
        question, answer = rng.choice(GENERATORS)(rng)
        if question not in seen:
            seen.add(question)
            yield question, answer


def math_documents(rng: random.Random, n_chars: int) -> list[str]:
    """Documents of 4-8 distinct problems, one per line, until about `n_chars` in total."""
    problems = unique_problems(rng)
    docs: list[str] = []
    total = 0
    while total < n_chars:
        doc = "\n".join(format_problem(*next(problems)) for _ in range(rng.randint(4, 8)))
        docs.append(doc)
        total += len(doc)
    return docs
