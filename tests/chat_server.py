"""A real HTTP server on a loopback port that speaks the chat-completions protocol, for tests.

It answers like a well-behaved but chatty LLM (a preamble, numbered and quoted lines,
one per requested target, deterministic given the prompt) and can be told to fail:
`faults` is a queue of misbehaviours served to the next POSTs in order ("429" with
Retry-After, "500", "slow" past the client's timeout, "malformed" JSON).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FILLER = ("bright", "quiet", "detailed", "warm", "soft", "golden", "misty", "vivid", "calm", "bold", "crisp", "gentle")
_STYLE = {"highly relevant": "high", "loosely related": "medium", "off-topic": "low"}


def fake_answer(user_message: str) -> str:
    """Numbered outputs for each target line of the request, with the length asked for."""
    intent = re.search(r"^Intent: (.*)$", user_message, re.MULTILINE).group(1)  # type: ignore[union-attr]
    lines = ["Here are the outputs:", ""]
    for number, target, style_text in re.findall(r"^(\d+)\. about (\d+) words, ([a-z -]+?):", user_message, re.M):
        style = _STYLE.get(style_text, "low")
        seed = hashlib.sha512(f"{intent}|{number}|{style}".encode()).digest()  # 64 bytes: enough words
        filler = [FILLER[b % len(FILLER)] for b in seed]
        lead = intent.split() if style == "high" else filler[:1]
        words = (lead + filler)[: max(int(target), len(lead) + 2)]
        # a comma after the lead and a semicolon before the last word: valid for list tasks too
        text = " ".join(lead) + ", " + " ".join(words[len(lead) : -1]) + "; " + words[-1]
        lines.append(f'{number}. "{text}"')
    return "\n".join(lines)


class ChatServer:
    """Start with `with ChatServer(...) as server:`; `server.base_url` ends in /v1."""

    def __init__(self, model: str = "fake-llama", delay: float = 0.0, faults: list[str] | None = None) -> None:
        self.model = model
        self.delay = delay
        self.faults = list(faults or [])
        self.slow_seconds = 2.0
        self.served: Counter[str] = Counter()
        self.authorization: list[str] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def next_fault(self) -> str:
        with self._lock:
            fault = self.faults.pop(0) if self.faults else "ok"
            self.served[fault] += 1
            return fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": server.model}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.authorization.append(self.headers.get("authorization", ""))
                if self.path != "/v1/chat/completions" or body.get("model") != server.model:
                    self._send(404, json.dumps({"error": f"model {body.get('model')} not found"}).encode())
                    return
                fault = server.next_fault()
                if fault == "429":
                    self._send(429, b'{"error": "rate limited"}', {"retry-after": "1"})
                    return
                if fault == "500":
                    self._send(500, b'{"error": "internal"}')
                    return
                if fault == "malformed":
                    self._send(200, b'{"choices": [{"message": {"content": "1. half a bo')
                    return
                time.sleep(server.slow_seconds if fault == "slow" else server.delay)
                content = fake_answer(body["messages"][-1]["content"])
                reply = {
                    "object": "chat.completion",
                    "model": server.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                    "usage": {
                        "prompt_tokens": sum(len(m["content"]) // 4 for m in body["messages"]),
                        "completion_tokens": len(content) // 4,
                    },
                }
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(200, json.dumps(reply).encode())  # "slow": the client may have hung up already

        return Handler
