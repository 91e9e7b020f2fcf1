"""`python -m server serve`: the HTTP server, one process, one uvicorn worker.

Every setting is a flag here and a `PROMPTGEN_*` environment variable (config.py);
flags win. SIGTERM drains: /readyz turns 503, new requests are refused, requests in
flight get `grace_period_s` to finish, then the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

from server.config import Settings

log = logging.getLogger("server")


class DrainingServer(uvicorn.Server):
    """uvicorn stops listening at once on SIGTERM; a load balancer wants /readyz to
    fail first while in-flight requests finish. So the first SIGTERM only drains;
    uvicorn's own shutdown starts when the engine is empty or the grace period is over.
    A second SIGTERM, or SIGINT, shuts down at once as uvicorn usually does."""

    def __init__(self, config: uvicorn.Config, grace_period_s: float) -> None:
        super().__init__(config)
        self.grace_period_s = grace_period_s
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._draining:
            self._draining = True
            threading.Thread(target=self._drain_then_exit, name="drain", daemon=True).start()
            return
        super().handle_exit(sig, frame)

    def _drain_then_exit(self) -> None:
        app: Any = self.config.app  # the FastAPI app create_app built (uvicorn types it as any ASGI app)
        engine = app.state.server.engine
        engine.drain()
        log.info("draining", extra={"in_flight": engine.in_flight, "grace_period_s": self.grace_period_s})
        deadline = time.monotonic() + self.grace_period_s
        while engine.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("drained", extra={"in_flight_left": engine.in_flight})
        self.should_exit = True  # not handle_exit: that would re-raise SIGTERM after shutdown (exit 143)


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, documented by the field's own description."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": f"{field.description} (default: {default})"}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = name.upper()
        parser.add_argument(flag, **kwargs)


def serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from contract.manifest import BundleError
    from server.api.app import create_app
    from server.engine.process import EngineStartError
    from server.log import configure_logging

    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        print(f"server: invalid setting: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        app = create_app(settings)
    except BundleError as e:
        print(f"server: cannot load the bundle: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # e.g. an ONNX file that ORT cannot load, an unreadable keys file: one line, exit 2
        raised = str(e) if isinstance(e, EngineStartError) else f"{type(e).__name__}: {e}"  # named inside already
        reason = " ".join(raised.split())[:500]
        print(f"server: cannot start: {reason}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,  # keep our JSON logging
        timeout_graceful_shutdown=2,
    )
    DrainingServer(config, settings.grace_period_s).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the HTTP server on a bundle")
    add_settings_flags(serve_parser)
    serve_parser.set_defaults(func=serve)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
