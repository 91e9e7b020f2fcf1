"""`ApiKeyAuth`: optional Bearer keys in front of every route.

Off unless keys are configured (`api_keys`, `api_keys_file`; server/README.md). Then
every route needs `Authorization: Bearer <key>` except `/healthz` and `/readyz` (probes
carry no secrets). `/metrics` has its own keys (`metrics_api_keys`), so a scraper
need not hold a generation key; without them it is open. A key is compared with
every configured key in constant time (`hmac.compare_digest`, no early exit), and
keys are never logged: settings hold them as `SecretStr`. Each 401 is counted in
`promptgen_rejected_requests_total`.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import error_response
from server.metrics import Metrics

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"


def key_matches(given: bytes, keys: list[bytes]) -> bool:
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)
    return found


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, api_keys: list[str], metrics_keys: list[str], metrics: Metrics) -> None:
        self.app = app
        self.api_keys = [k.encode() for k in api_keys]
        self.metrics_keys = [k.encode() for k in metrics_keys]
        self.metrics = metrics

    def _keys_for(self, path: str) -> list[bytes]:
        if path in OPEN_PATHS:
            return []
        if path == METRICS_PATH:
            return self.metrics_keys
        return self.api_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        keys = self._keys_for(scope.get("path", "")) if scope["type"] == "http" else []
        if not keys:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not key_matches(given.strip(), keys):
            self.metrics.observe_rejection(401, "unauthorized")
            response = error_response(
                401,
                "unauthorized",
                "missing or wrong API key: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
