"""`python -m loadtest.baseline`: the naive servers the benchmark compares ours with. A benchmark
fixture, never a product path.

A FastAPI app that answers `/v1/generate` (same request body and usage counts as ours, no
streaming) with one generate call per request, one request at a time, on the same checkpoint:
- `--backend transformers`: `model.generate()` in PyTorch fp32, what one writes first;
- `--backend ctranslate2`: CTranslate2's `Generator.generate_batch` on a model converted by
  CTranslate2's own converter (loadtest/models.py), behind the same wrapper.

The prompt is the checkpoint's own command (`contract.command.prompt_ids`), so the work per
request matches ours; one difference is left in on purpose: positions start at 0 rather than at
the spec's output offset (neither generate() takes one), which changes the text a trained model
writes, not the cost of a token.
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field
from tokenizers import Tokenizer

from contract.command import EOS_TOKEN, CommandSpec, prompt_ids, special_ids


class Controls(BaseModel):
    length: int = 20
    relevance: str = "high"


class GenerateRequest(BaseModel):
    task: str
    input: str
    controls: Controls = Field(default_factory=Controls)
    n: int = 1
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int | None = None


class TransformersBackend:
    def __init__(self, checkpoint: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(checkpoint), local_files_only=True).eval()

    def generate(self, prompt: list[int], request: GenerateRequest, eos: int) -> list[list[int]]:
        torch = self.torch
        if request.seed is not None:
            torch.manual_seed(request.seed)
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=request.temperature > 0,
                temperature=request.temperature or None,
                top_p=request.top_p,
                max_new_tokens=request.max_new_tokens,
                num_return_sequences=request.n,
                eos_token_id=eos,
                pad_token_id=eos,
            )
        return [row[len(prompt) :].tolist() for row in out]


class CTranslate2Backend:
    def __init__(self, model_dir: Path, threads: int) -> None:
        import ctranslate2

        self.generator = ctranslate2.Generator(str(model_dir), device="cpu", intra_threads=threads)
        vocabulary = json.loads((model_dir / "vocabulary.json").read_text())
        self.tokens: list[str] = vocabulary
        self.ids = {token: i for i, token in enumerate(vocabulary)}

    def generate(self, prompt: list[int], request: GenerateRequest, eos: int) -> list[list[int]]:
        start = [self.tokens[i] for i in prompt]
        results = self.generator.generate_batch(
            [start] * request.n,
            max_length=request.max_new_tokens,
            sampling_topk=0 if request.temperature > 0 else 1,  # 0: the whole distribution
            sampling_topp=request.top_p,
            sampling_temperature=request.temperature or 1.0,
            include_prompt_in_result=False,
            end_token=self.tokens[eos],
        )
        return [[self.ids[t] for t in r.sequences[0]] for r in results]


def build_app(checkpoint: Path, backend: TransformersBackend | CTranslate2Backend) -> FastAPI:
    udrl = json.loads((checkpoint / "udrl.json").read_text())
    spec = CommandSpec.from_dict(udrl["command"])
    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    eos = special_ids(tokenizer, [EOS_TOKEN])[0]
    lock = threading.Lock()  # one request at a time: what a plain generate() server does
    app = FastAPI(title="naive baseline (benchmark fixture)")

    @app.get("/healthz")
    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/tasks")
    def tasks() -> dict[str, Any]:
        return {"tasks": [{"name": t} for t in spec.tasks]}

    @app.post("/v1/generate")
    def generate(request: GenerateRequest) -> dict[str, Any]:
        prompt = prompt_ids(tokenizer, spec, request.task, request.controls.length, request.controls.relevance,
                            request.input)  # fmt: skip
        with lock:
            rows = backend.generate(prompt, request, eos)
        # tokens up to and including EOS, as our server counts them
        lengths = [row.index(eos) + 1 if eos in row else len(row) for row in rows]
        outputs = [{"index": i, "text": tokenizer.decode(row[:n]), "tokens": n} for i, (row, n) in
                   enumerate(zip(rows, lengths, strict=True))]  # fmt: skip
        usage = {"prompt_tokens": len(prompt), "completion_tokens": sum(lengths)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"outputs": outputs, "usage": usage}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.baseline", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (udrl.json, tokenizer)")
    parser.add_argument("--backend", choices=("transformers", "ctranslate2"), default="transformers")
    parser.add_argument("--ct2-model", type=Path, help="CTranslate2 model folder (--backend ctranslate2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.backend == "ctranslate2":
        if args.ct2_model is None:
            parser.error("--backend ctranslate2 needs --ct2-model")
        backend: TransformersBackend | CTranslate2Backend = CTranslate2Backend(args.ct2_model, args.threads)
    else:
        backend = TransformersBackend(args.checkpoint, args.threads)
    uvicorn.run(build_app(args.checkpoint, backend), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
