"""Server-sent events framing (https://html.spec.whatwg.org/multipage/server-sent-events.html)."""

from __future__ import annotations

import json
from typing import Any

MEDIA_TYPE = "text/event-stream"
# proxies (nginx) buffer responses unless told not to; a buffered stream is not a stream
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(data: Any, event: str | None = None) -> str:
    """One event: optional `event:` line, one `data:` line of compact JSON (never a raw
    newline inside), and the blank line that ends it."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"
