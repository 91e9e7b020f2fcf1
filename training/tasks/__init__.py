"""The task registry: one TOML file per task in this folder; adding a task is adding a file.

A task file holds everything a teacher needs and nothing a teacher does: the
description, the system prompt and few-shot examples for LLM teachers, how to parse
an answer into outputs, which outputs are valid, which rewards apply, the spread of
lengths to ask for, and the composition recipe of the procedural teacher.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).parent
STYLES = ("high", "medium", "low")  # relevance styles a teacher is asked for (see training.teachers.prompting)
KNOWN_REWARDS = ("length", "relevance")


class TaskError(ValueError):
    """A task file that is missing, malformed, or names something unknown."""


@dataclass(frozen=True)
class FewShot:
    intent: str
    outputs: tuple[dict[str, Any], ...]  # each {"style", "words", "text"}


@dataclass(frozen=True)
class ParseRules:
    split: str = "lines"
    strip_numbering: bool = True
    strip_bullets: bool = True
    strip_quotes: bool = True
    strip_trailing: str = ""
    skip_lines: tuple[str, ...] = ()
    normalize_separator: str = ""


@dataclass(frozen=True)
class Validity:
    min_words: int = 1
    max_words: int = 48
    forbid: tuple[str, ...] = ()
    require: str = ""


@dataclass(frozen=True)
class ProceduralRecipe:
    joiner: str
    case: str  # "lower" | "title" | "as_is"
    max_anchors: int
    high: tuple[str, ...]
    medium: tuple[str, ...]
    fill: tuple[str, ...]
    min_pieces: int = 1  # e.g. 2 for tasks whose output is a list (queries, tags)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    rewards: tuple[str, ...]
    target_words: tuple[int, int]
    system_prompt: str
    few_shot: tuple[FewShot, ...]
    parse: ParseRules
    validity: Validity
    procedural: ProceduralRecipe | None
    source: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


def _check_regexes(name: str, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise TaskError(f"task {name}: bad regex {pattern!r}: {error}") from None


def _fields(table: dict[str, Any]) -> dict[str, Any]:
    """A TOML table as dataclass fields: lists become the tuples the frozen dataclasses hold."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}


def parse_task(name: str, data: dict[str, Any]) -> TaskSpec:
    """A TaskSpec from a task file's parsed TOML, with errors that name the task and field."""
    try:
        low, high = (int(w) for w in data["target_words"])
        spec = TaskSpec(
            name=str(data.get("name", name)),
            description=str(data["description"]),
            rewards=tuple(data.get("rewards", KNOWN_REWARDS)),
            target_words=(low, high),
            system_prompt=str(data["system_prompt"]),
            few_shot=tuple(FewShot(str(s["intent"]), tuple(s["outputs"])) for s in data.get("few_shot", [])),
            parse=ParseRules(**_fields(data.get("parse", {}))),
            validity=Validity(**_fields(data.get("validity", {}))),
            procedural=(ProceduralRecipe(**_fields(data["procedural"])) if "procedural" in data else None),
            source=data,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise TaskError(f"task {name}: malformed task file ({type(error).__name__}: {error})") from None
    if spec.name != name:
        raise TaskError(f"task file {name}.toml names its task {spec.name!r}")
    if not 1 <= low <= high:
        raise TaskError(f"task {name}: target_words {low}..{high} is not a range of positive word counts")
    if unknown := set(spec.rewards) - set(KNOWN_REWARDS):
        raise TaskError(f"task {name}: unknown rewards {sorted(unknown)}; known: {KNOWN_REWARDS}")
    for shot in spec.few_shot:
        for output in shot.outputs:
            if output.get("style") not in STYLES or "text" not in output:
                raise TaskError(f"task {name}: few-shot outputs need a style in {STYLES} and a text")
    _check_regexes(name, spec.parse.skip_lines + spec.validity.forbid + (spec.validity.require,))
    return spec


def load_tasks(names: list[str] | None = None, tasks_dir: Path = TASKS_DIR) -> dict[str, TaskSpec]:
    """The tasks named (all of them by default), in file-name order."""
    available = {path.stem: path for path in sorted(Path(tasks_dir).glob("*.toml"))}
    if names is None:
        names = list(available)
    if missing := [n for n in names if n not in available]:
        raise TaskError(f"unknown task(s) {missing}; available: {sorted(available)}")
    tasks = {}
    for name in names:
        with open(available[name], "rb") as f:
            try:
                tasks[name] = parse_task(name, tomllib.load(f))
            except tomllib.TOMLDecodeError as error:
                raise TaskError(f"task file {available[name]}: {error}") from None
    return tasks
