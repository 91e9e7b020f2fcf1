"""Teacher backends behind one interface (`training.teachers.base.Teacher`).

- `procedural`: built-in, offline, deterministic (training.teachers.procedural)
- `openai`: any OpenAI-compatible chat-completions server (training.teachers.openai_compatible)
- `hf`: a local causal LM through transformers, from a folder or a GGUF file (training.teachers.hf_local)

Backends are imported only when chosen, so the procedural teacher needs neither httpx
nor torch.
"""

from __future__ import annotations

import argparse
import os

from training.teachers.base import Completion, Request, Target, Teacher, TeacherError

KINDS = ("procedural", "openai", "hf")

__all__ = [
    "KINDS",
    "Completion",
    "Request",
    "Target",
    "Teacher",
    "TeacherError",
    "add_teacher_arguments",
    "build_teacher",
]


def add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("teacher")
    group.add_argument("--teacher", choices=KINDS, default="procedural", help="teacher backend (default: procedural)")
    group.add_argument(
        "--base-url",
        default=os.environ.get("TEACHER_BASE_URL", "http://127.0.0.1:8080/v1"),
        help="openai: chat-completions base URL (env TEACHER_BASE_URL)",
    )
    group.add_argument(
        "--model",
        default=os.environ.get("TEACHER_MODEL"),
        help="openai: model name; hf: model folder or GGUF file (env TEACHER_MODEL)",
    )
    group.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="openai: environment variable holding the API key (never logged)",
    )
    group.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight")
    group.add_argument("--timeout", type=float, default=60.0, help="openai: seconds per request")
    group.add_argument("--max-retries", type=int, default=5, help="openai: retries per request")
    group.add_argument("--temperature", type=float, default=0.9, help="openai/hf: sampling temperature")
    group.add_argument("--batch-size", type=int, default=8, help="hf: requests per generate() batch")
    group.add_argument(
        "--threads", type=int, default=None, help="hf: torch CPU threads (1 when other jobs share the cores)"
    )
    group.add_argument("--max-new-tokens", type=int, default=384, help="openai/hf: tokens per answer")


def build_teacher(args: argparse.Namespace) -> Teacher:
    """The teacher the CLI flags ask for; TeacherError with a one-line reason if it cannot be built."""
    if args.teacher == "procedural":
        from training.teachers.procedural import ProceduralTeacher

        return ProceduralTeacher()
    if args.teacher == "openai":
        from training.teachers.openai_compatible import OpenAITeacher

        if not args.model:
            raise TeacherError("--teacher openai needs --model (the name the server serves)")
        return OpenAITeacher(
            base_url=args.base_url,
            model=args.model,
            api_key_env=args.api_key_env,
            concurrency=args.concurrency,
            timeout=args.timeout,
            max_retries=args.max_retries,
            temperature=args.temperature,
            max_tokens=args.max_new_tokens,
        )
    if args.teacher == "hf":
        from training.teachers.hf_local import HFTeacher

        if not args.model:
            raise TeacherError("--teacher hf needs --model (a local model folder or a .gguf file)")
        return HFTeacher(
            args.model,
            batch_size=args.batch_size,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            threads=args.threads,
        )
    raise TeacherError(f"unknown teacher {args.teacher!r}; choose from {KINDS}")
