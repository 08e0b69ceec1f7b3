"""A test engine with injectable faults, run by the real worker as `tests.fault_engine:...`.

A request's text may start with a directive `[mode]`, `[mode:arg]` or `[mode#token]`: ok,
slow:<s>, hang, crash, garbage, leak:<MB>, bloat:<MB> (leak, then hang), error, oserror:<errno>
(the engine's own I/O fails: OSError with that errno), silent (no samples at all). With `#token`
the fault fires only the first time that token is seen (a marker file in `marker_dir`), so the
supervisor's retry succeeds. Otherwise it speaks a 220 Hz tone of 50 ms per character at 16 kHz.
With a `marker_dir`, every call first appends its text to `started.log` there, so a test can
wait until a job is really inside the engine.

A daemon builds the engine from config alone, so tests also steer it by environment:
FAULT_DELAY_S is added to every call; with FAULT_HOLD_TEXT and FAULT_HOLD_RELEASE, a call whose
text contains the former waits (at most a minute) until the file the latter names exists, and
takes it away: the test decides when that segment is spoken, instead of guessing a delay.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msgvoice.worker.protocol import Prosody

RATE = 16_000
FAILING = {
    "error": lambda _arg: ValueError("the engine refused this text"),
    "oserror": lambda arg: OSError(int(arg), os.strerror(int(arg))),
}
_DIRECTIVE = re.compile(r"^\[(\w+)(?::([\d.]+))?(?:#(\w+))?\]\s*")


class FaultEngine:
    name = "fault"

    def __init__(
        self,
        marker_dir: str = "",
        exit_at_start: bool = False,
        load_s: float = 0.0,
        leak_mb_per_job: int = 0,
        delay_s: float | None = None,
    ) -> None:
        if exit_at_start:
            os._exit(5)
        time.sleep(load_s)
        self.marker_dir = Path(marker_dir) if marker_dir else None
        self.leak_mb_per_job = leak_mb_per_job
        self.delay_s = float(os.environ.get("FAULT_DELAY_S", "0")) if delay_s is None else delay_s
        self.hold_text = os.environ.get("FAULT_HOLD_TEXT", "")
        self.release = Path(os.environ.get("FAULT_HOLD_RELEASE", "/nonexistent"))
        self._hoard: list[bytearray] = []

    def _fires(self, token: str | None) -> bool:
        if token is None or self.marker_dir is None:
            return True
        marker = self.marker_dir / token
        if marker.exists():
            return False
        marker.touch()
        return True

    def _log_start(self, text: str) -> None:
        if self.marker_dir is not None:
            with (self.marker_dir / "started.log").open("a", encoding="utf-8") as log:
                log.write(text + "\n")

    def _hold(self, text: str) -> None:
        """Wait for the release file (bounded), then take it, so the next hold waits again."""
        if not self.hold_text or self.hold_text not in text:
            return
        deadline = time.monotonic() + 60
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.release.unlink(missing_ok=True)

    def _leak(self, mb: float) -> None:
        block = bytearray(int(mb * 1024 * 1024))
        block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
        self._hoard.append(block)

    def _fault(self, mode: str, arg: float) -> bool:
        """Act out one directive; True when the answer is to be silence."""
        if mode == "slow":
            time.sleep(arg)
        elif mode == "hang":
            time.sleep(3600)
        elif mode == "crash":
            os._exit(11)
        elif mode == "garbage":
            os.write(int(os.environ["MSGVOICE_WORKER_PROTOCOL_FD"]), b"this is not json\n")
        elif mode in ("leak", "bloat"):
            self._leak(arg)
            if mode == "bloat":
                time.sleep(3600)
        elif mode in FAILING:
            raise FAILING[mode](arg)
        return mode == "silent"

    def synthesize(
        self, text: str, voice: str | None, prosody: Prosody, emotion: Sequence[float] | None
    ) -> tuple[Any, int]:
        self._log_start(text)
        match = _DIRECTIVE.match(text)
        if self.leak_mb_per_job:
            self._leak(self.leak_mb_per_job)
        fault = match and self._fires(match.group(3))
        if fault and match and self._fault(match.group(1), float(match.group(2) or 0)):
            return np.zeros(0, np.float32), RATE
        self._hold(text)
        time.sleep(self.delay_s)
        spoken = _DIRECTIVE.sub("", text)
        t = np.arange(int(RATE * 0.05 * max(1, len(spoken)))) / RATE
        return (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), RATE

    def facts(self) -> dict[str, Any]:
        return {"sample_rate": RATE, "hoard_mb": sum(map(len, self._hoard)) / 2**20}
