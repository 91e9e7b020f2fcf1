"""What the routes share: the loaded bundle, the engine and the metrics of one app."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request
from tokenizers import Tokenizer

from contract.manifest import Manifest
from server.config import Settings
from server.engine.engine import EngineBase
from server.metrics import Metrics


@dataclass
class ServerState:
    settings: Settings
    manifest: Manifest
    tokenizer: Tokenizer
    engine: EngineBase
    metrics: Metrics
    model_name: str
    variant: str
    provider: str
    created: int = field(default_factory=lambda: int(time.time()))


def get_state(request: Request) -> ServerState:
    return request.app.state.server
