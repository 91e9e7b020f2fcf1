"""The chat prompt LLM teachers get: system prompt, few-shot turns, and a request for N outputs.

The user turn lists one line per wanted output with its target length and relevance
style, so an LLM teacher spreads its answers along both rewards just as the
procedural teacher does. Few-shot examples use the same layout, so the model sees
what a good answer to exactly this kind of request looks like.
"""

from __future__ import annotations

import hashlib
import json

from contract.command import count_words
from training.tasks import TaskSpec
from training.teachers.base import Request, Target

PROMPT_VERSION = 1  # bump when the wording below changes: it is part of the prompt hash

STYLE_INSTRUCTIONS = {
    "high": "highly relevant: use the intent's exact words, plus on-topic detail",
    "medium": "loosely related: paraphrase the intent or use only part of it",
    "low": "off-topic: generic details that do not mention the intent",
}

USER_TEMPLATE = (
    "Intent: {intent}\n"
    "Write {n} different outputs for this intent, one per line, numbered 1 to {n}. "
    "Each line has its own target length and relevance:\n{targets}\n"
    "Answer with the {n} numbered lines only."
)


def user_message(intent: str, targets: tuple[Target, ...]) -> str:
    lines = "\n".join(f"{i}. about {t.words} words, {STYLE_INSTRUCTIONS[t.style]}" for i, t in enumerate(targets, 1))
    return USER_TEMPLATE.format(intent=intent, n=len(targets), targets=lines)


def build_messages(task: TaskSpec, request: Request) -> list[dict[str, str]]:
    """OpenAI-style chat messages: system, few-shot user/assistant turns, the request."""
    messages = [{"role": "system", "content": task.system_prompt}]
    for shot in task.few_shot:
        targets = tuple(Target(int(o.get("words") or count_words(o["text"])), o["style"]) for o in shot.outputs)
        answer = "\n".join(f"{i}. {o['text']}" for i, o in enumerate(shot.outputs, 1))
        messages += [
            {"role": "user", "content": user_message(shot.intent, targets)},
            {"role": "assistant", "content": answer},
        ]
    messages.append({"role": "user", "content": user_message(request.intent, request.targets)})
    return messages


def template_hash(task: TaskSpec) -> str:
    """Hash of everything in the prompt except the intent and targets: the records' `prompt_hash`."""
    shots = [[s.intent, list(s.outputs)] for s in task.few_shot]
    payload = json.dumps(
        [PROMPT_VERSION, task.system_prompt, shots, STYLE_INSTRUCTIONS, USER_TEMPLATE, task.source.get("parse")],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
