"""Server settings: environment variables (`PROMPTGEN_*`) and `python -m server serve` flags.

One flat pydantic-settings class, so every knob has one name, one default and one
place where it is documented (`python -m server serve --help` prints them all).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTGEN_", extra="ignore")

    bundle: Path = Field(Path("artifacts/bundle"), description="bundle directory (manifest.json, tokenizer, ONNX)")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in a container)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    variant: str = Field("auto", description="bundle variant: auto (fp16 on CUDA, else int8, else fp32) or a name")
    provider: Literal["auto", "cpu", "cuda"] = Field("auto", description="ONNX Runtime execution provider")
    device_sampling: Literal["auto", "on", "off"] = Field(
        "auto",
        description="sample inside an ONNX graph next to the model (auto: on CUDA, so only token ids are copied back)",
    )
    intra_op_threads: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="ORT threads inside one operator (auto: 1 for a CPU model under 64 MB, whose operators are too "
        "short to split, else one per CPU this process may use: a container's CPU limit or cpuset, else ORT's "
        "default; 0: ORT's default, one per physical core of the host)",
    )
    inter_op_threads: int = Field(1, ge=0, description="ORT threads across operators (0: ORT's default)")
    ort_spinning: bool = Field(
        True,
        description="ORT's worker threads busy-wait between the operators of one forward, and stop "
        "when it returns (off: each operator wakes a sleeping worker)",
    )
    max_batch_size: int = Field(32, ge=1, description="most sequences decoded together (n samples count each)")
    max_queue: int = Field(64, ge=0, description="most requests waiting for a slot; beyond it: 429")
    batch_window_ms: float = Field(
        0.0, ge=0, description="when idle, wait this long to prefill arrivals together (0: prefill at once)"
    )
    max_prefill_tokens: int = Field(
        128, ge=0, description="while rows decode, most padded prompt tokens one step prefills (0: no bound)"
    )
    engine_process: bool = Field(
        True,
        description="run the engine (model, scheduler) in a process of its own, as vLLM's V1 engine core, so the "
        "HTTP side's Python and the engine's do not take turns on one GIL (off: a thread of the server process)",
    )
    mixed_prefill: bool = Field(
        True,
        description="prefill joining requests in the running rows' decode step where the variant has a mixed graph "
        "(CPU; off: one forward of their own, and the mixed graph is not loaded)",
    )
    attention_kernel: Literal["auto", "on", "off"] = Field(
        "auto",
        description="our int8 attention kernel in place of ONNX Runtime's GroupQueryAttention, for an int8 KV cache "
        "on CPU (runtime/attention_kernel.py; auto: where the install built it, on: fail if it cannot be used)",
    )
    matmul_kernel: Literal["auto", "on", "off"] = Field(
        "auto",
        description="our INT8 weight MatMul on AMX tiles in place of ONNX Runtime's dynamic-quantization kernel, "
        "same outputs to the bit (runtime/matmul_kernel.py; auto: where the install built it and the CPU has AMX, "
        "on: fail if it cannot be used, portable C without AMX)",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="default per-request deadline (504 when passed)")
    max_request_timeout_s: float = Field(300.0, gt=0, description="the longest deadline a request may ask for")
    grace_period_s: float = Field(20.0, ge=0, description="on SIGTERM, how long in-flight requests may finish")
    heartbeat_timeout_s: float = Field(10.0, gt=0, description="/readyz fails when the engine loop is silent this long")
    log_request_text: bool = Field(False, description="include request input and output text in logs")
    log_level: str = Field("info", description="python logging level")
    model_name: str = Field("", description="model label in metrics and /v1/models (default: the bundle's name)")
    # --- security (server/api/auth.py, server/api/guard.py; server/README.md) ---
    api_keys: SecretStr = Field(
        SecretStr(""), description="comma-separated Bearer keys; set: every route but /healthz, /readyz needs one"
    )
    api_keys_file: Path | None = Field(None, description="file of Bearer keys, one a line, added to api_keys")
    metrics_api_keys: SecretStr = Field(
        SecretStr(""), description="comma-separated Bearer keys for /metrics (empty: /metrics is open)"
    )
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS (empty: CORS off)")
    max_body_bytes: int = Field(65536, ge=1024, description="largest request body; beyond it: 413")
    max_json_depth: int = Field(8, ge=2, description="deepest nesting of objects and arrays in a request body")
    # --- test hook (server/engine/faults.py): never set in production ---
    fault_inject: str = Field(
        "", description="TEST HOOK: raise@N, hang@N or exit@N makes the Nth model forward fail, hang or end the engine"
    )

    @property
    def capacity(self) -> int:
        """Requests in flight (running and queued) before a 429."""
        return self.max_batch_size + self.max_queue

    def keys(self, which: str = "api") -> list[str]:
        """The configured keys: `api` (api_keys + api_keys_file) or `metrics`."""
        raw = (self.api_keys if which == "api" else self.metrics_api_keys).get_secret_value().split(",")
        if which == "api" and self.api_keys_file is not None:
            raw += [line.split("#", 1)[0] for line in self.api_keys_file.read_text().splitlines()]
        return [k.strip() for k in raw if k.strip()]
