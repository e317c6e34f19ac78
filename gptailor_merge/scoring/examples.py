"""Task examples and their parsing: JSONL lines or dataset rows in, frozen examples out.

Accepts our field names (`context`, `choices`, `answer`; `text` for perplexity) and lm-eval's
(`query`/`question`/`ctx`, `choices`/`endings`, `gold`/`label`/`answerKey`). Unlike lm-eval, an
out-of-range answer is an error, never a silent 0. No torch, no model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gptailor_merge.core.errors import TaskError

Kind = Literal["multiple_choice", "perplexity"]

CONTEXT_FIELDS = ("context", "query", "question", "ctx")
CHOICES_FIELDS = ("choices", "endings")
ANSWER_FIELDS = ("answer", "gold", "label", "answerKey")
TEXT_FIELDS = ("text",)


@dataclass(frozen=True)
class ChoiceExample:
    """A multiple-choice question: the context is scored against each choice as continuation."""

    context: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class TextExample:
    """A text sample for perplexity."""

    text: str


Example = ChoiceExample | TextExample


def example_kind(example: Example) -> Kind:
    return "multiple_choice" if isinstance(example, ChoiceExample) else "perplexity"


def _first(record: Mapping[str, Any], fields: tuple[str, ...]) -> tuple[str, Any] | None:
    for field in fields:
        if field in record and record[field] is not None:
            return field, record[field]
    return None


def _need(record: Mapping[str, Any], fields: tuple[str, ...], where: str) -> tuple[str, Any]:
    found = _first(record, fields)
    if found is None:
        raise TaskError(
            f"{where}: missing field {fields[0]!r} (also accepted: {', '.join(fields[1:])}); "
            f"the record has {sorted(record)}."
        )
    return found


def _choices(value: Any, where: str) -> tuple[tuple[str, ...], list[Any] | None]:
    labels = None
    if isinstance(value, Mapping) and "text" in value:  # ARC style {"text": [...], "label": [...]}
        labels = list(value.get("label") or []) or None
        value = value["text"]
    if not isinstance(value, list | tuple) or len(value) < 2:
        raise TaskError(f"{where}: 'choices' must be a list of at least 2 strings, got {value!r}.")
    if not all(isinstance(choice, str) and choice for choice in value):
        raise TaskError(f"{where}: every choice must be a non-empty string, got {value!r}.")
    return tuple(value), labels


def _answer(value: Any, field: str, choices: tuple[str, ...], labels: list[Any] | None,
            where: str) -> int:
    if isinstance(value, str) and labels is not None and value in labels:
        value = labels.index(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskError(f"{where}: {field!r} must be an integer index into choices, got {value!r}.")
    if not 0 <= value < len(choices):
        raise TaskError(
            f"{where}: {field!r} is {value}, out of range for {len(choices)} choices "
            f"(valid: 0..{len(choices) - 1}). Fix the answer index; it is 0-based."
        )
    return value


def parse_record(record: Any, where: str, kind: Kind | None = None) -> Example:
    """One JSON object to an example; `kind` None means detect it (a `text` field => perplexity)."""
    if not isinstance(record, Mapping):
        raise TaskError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    if kind is None:
        has_choices = _first(record, CHOICES_FIELDS) is not None
        kind = "perplexity" if _first(record, TEXT_FIELDS) and not has_choices else "multiple_choice"
    if kind == "perplexity":
        _, text = _need(record, TEXT_FIELDS, where)
        if not isinstance(text, str) or not text:
            raise TaskError(f"{where}: 'text' must be a non-empty string, got {text!r}.")
        return TextExample(text)
    _, context = _need(record, CONTEXT_FIELDS, where)
    if not isinstance(context, str):
        raise TaskError(f"{where}: the context must be a string, got {context!r}.")
    _, raw_choices = _need(record, CHOICES_FIELDS, where)
    choices, labels = _choices(raw_choices, where)
    field, raw_answer = _need(record, ANSWER_FIELDS, where)
    return ChoiceExample(context, choices, _answer(raw_answer, field, choices, labels, where))


def parse_records(records: Iterable[Any], source: str, kind: Kind | None = None
                  ) -> tuple[Example, ...]:
    """Rows of a dataset to examples; the first row fixes the kind unless `kind` is given."""
    examples: list[Example] = []
    for index, record in enumerate(records):
        example = parse_record(record, f"{source}: row {index}", kind)
        kind = example_kind(example)
        examples.append(example)
    return tuple(examples)


def read_jsonl(path: str | Path, kind: Kind | None = None) -> tuple[Example, ...]:
    """Examples of a JSONL file in file order; errors name the file and the 1-based line."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {str(path)!r} does not exist.")
    examples: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TaskError(f"{where}: invalid JSON ({error.msg} at column {error.colno}).") from None
            example = parse_record(record, where, kind)
            kind = example_kind(example)
            examples.append(example)
    if not examples:
        raise TaskError(f"task file {str(path)!r} has no examples.")
    return tuple(examples)
