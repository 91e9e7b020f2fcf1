"""From a teacher's answer to clean outputs, following the task's parse and validity rules.

LLM teachers number their lines, add bullets, quotes, bold markers and preambles
("Here are 4 prompts:"); all of that is stripped here, once, for every backend.
`reject_reason` then says why a cleaned output is unusable, so rejects can be
counted by reason.
"""

from __future__ import annotations

import re

from contract.command import count_words, normalize_text
from training.tasks import TaskSpec

_NUMBERING = re.compile(r"^\s*(?:\(?\d{1,3}[.):\]]|#\d{1,3}[.:)]?|\d{1,3}\s*-\s)\s*")
_LINE_NUMBER = re.compile(r"^\s*(?:[-*\u2022]\s*)?\(?#?(\d{1,3})[.):\]]")
_BULLET = re.compile(r"^\s*(?:[-*\u2022\u2023\u25e6\u2043>]+)\s+")
_MARKDOWN = re.compile(r"\*\*|__|`")
_QUOTES = "\"'\u201c\u201d\u2018\u2019\u00ab\u00bb"
_TAIL_NOTE = re.compile(r"\s*[\[(](?:\d+\s*words?|high|medium|low)[^\])]*[\])]\s*$", re.IGNORECASE)


def clean_output(task: TaskSpec, text: str) -> str:
    """One output line as the store keeps it: no list markers, quotes or stray spacing."""
    rules = task.parse
    text = _MARKDOWN.sub("", text)
    if rules.strip_bullets:
        text = _BULLET.sub("", text)
    if rules.strip_numbering:
        text = _NUMBERING.sub("", text)
    text = _TAIL_NOTE.sub("", text)  # "(12 words, high)": a teacher echoing our instructions back
    text = normalize_text(text)
    if rules.strip_quotes and len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    if rules.strip_trailing:
        text = text.rstrip(rules.strip_trailing).rstrip()
    if rules.normalize_separator:
        separator = rules.normalize_separator.strip()
        text = re.sub(rf"\s*{re.escape(separator)}\s*", rules.normalize_separator, text).strip(" " + separator)
    return normalize_text(text)


def _lines(task: TaskSpec, reply: str) -> list[tuple[int | None, str]]:
    """(the teacher's own line number if it gave one, cleaned text) per output line of an answer."""
    skip = [re.compile(p, re.IGNORECASE) for p in task.parse.skip_lines]
    lines = []
    for line in reply.splitlines():
        line = line.strip()
        if not line or any(p.search(line) for p in skip):
            continue
        number = _LINE_NUMBER.match(_MARKDOWN.sub("", line))
        cleaned = clean_output(task, line)
        if cleaned:
            lines.append((int(number.group(1)) if number else None, cleaned))
    return lines


def parse_reply(task: TaskSpec, reply: str) -> list[str]:
    """The outputs in a teacher's answer, in order, cleaned; preamble and blank lines dropped."""
    return [text for _, text in _lines(task, reply)]


def align_outputs(task: TaskSpec, reply: str, wanted: int) -> tuple[list[str | None], int]:
    """The answer's outputs in the order of the request's targets (None where one is missing), and
    how many lines were extra.

    When the teacher numbered its lines, line k answers target k, so a skipped number does
    not shift every later output onto the wrong target; a repeated or out-of-range number
    is extra. Unnumbered answers are taken in order.
    """
    lines = _lines(task, reply)
    numbered = [(k, text) for k, text in lines if k is not None]
    if not numbered or len(numbered) < len(lines) - len(numbered):
        texts = [text for _, text in lines]
        return [*texts[:wanted], *[None] * (wanted - len(texts))], max(0, len(texts) - wanted)
    slots: list[str | None] = [None] * wanted
    extra = len(lines) - len(numbered)
    for k, text in numbered:
        if 1 <= k <= wanted and slots[k - 1] is None:
            slots[k - 1] = text
        else:
            extra += 1
    return slots, extra


def reject_reason(task: TaskSpec, output: str) -> str | None:
    """Why `output` may not be stored (a short reason used as a counter key), or None if valid."""
    rules = task.validity
    if not output:
        return "empty"
    words = count_words(output)
    if words < rules.min_words:
        return "too_short"
    if words > rules.max_words:
        return "too_long"
    if any(re.search(p, output, re.IGNORECASE) for p in rules.forbid):
        return "forbidden"
    if rules.require and not re.search(rules.require, output):
        return "malformed_output"
    return None
