"""A TEST HOOK: make the Nth model forward fail, hang or end the engine thread.

Set with `fault_inject` (`PROMPTGEN_FAULT_INJECT`), e.g. `raise@3`: the third forward
raises, as a broken kernel or out-of-memory would. `hang@3` blocks the engine thread
for good (a deadlocked kernel); `exit@3` ends the engine thread (a crashed loop).
tests/test_hardening.py drives the real server through these to check that a failed
forward fails only its batch and that /readyz notices a hung or dead engine. Empty
(the default) costs one integer comparison per forward.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

MODES = ("raise", "hang", "exit")


class InjectedFault(RuntimeError):
    """The forward failed because the test hook said so."""


class EngineExit(BaseException):
    """Ends the engine thread: a BaseException, so the loop's `except Exception` lets it through."""


@dataclass
class FaultInjector:
    mode: str = ""
    at: int = 0  # 1-based forward count; 0: never
    forwards: int = 0

    @classmethod
    def parse(cls, spec: str) -> FaultInjector:
        if not spec:
            return cls()
        mode, _, at = spec.partition("@")
        if mode not in MODES or not at.isdigit() or int(at) < 1:
            raise ValueError(f"fault_inject must be one of {MODES} followed by @N (N >= 1), not {spec!r}")
        return cls(mode, int(at))

    def before_forward(self) -> None:
        self.forwards += 1
        if self.forwards != self.at:
            return
        if self.mode == "raise":
            raise InjectedFault(f"injected fault at forward {self.at}")
        if self.mode == "hang":
            threading.Event().wait()
        if self.mode == "exit":
            raise EngineExit(f"injected engine exit at forward {self.at}")
