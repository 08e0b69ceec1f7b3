"""Whether a reply should ask the LLM server now, and for how long: cold, warming, ready, down.

A reply never pays for a server that is not there: while the model warms (a background
one-token request at start) or the server is down, replies are told not to ask (the lexicon
speaks at once); a cold model (idle past its ttl) gives the one next reply the first-call
allowance; a warm one the ordinary bound. OPEN_AFTER failures of the server in a row, or one
failed cold call, mark it down, and a background probe backs off until it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from msgvoice.llm import ServerDown
from msgvoice.net import Backoff

log = logging.getLogger(__name__)

OPEN_AFTER = 3
"""Failures of the server in a row after which replies stop asking it."""
PROBE_FIRST_S, PROBE_MAX_S = 2.0, 120.0
"""Back-off of the background probe while the server is down."""
SERVER_FAILURES = (TimeoutError, ServerDown)
"""The server did not answer (anything else it raised was an answer)."""


class Liveness:
    """The state of one LLM server as its replies see it."""

    def __init__(
        self,
        name: str,
        ttl_s: float,
        bound_s: float,
        cold_bound_s: float,
        ping: Callable[[], Awaitable[object]],
    ) -> None:
        self.name, self.ttl_s = name, ttl_s
        self.warm_bound_s, self.cold_bound_s = bound_s, cold_bound_s
        self.ping = ping
        self.warm_until = 0.0
        """Monotonic time until which the model is taken to be loaded."""
        self.failures = 0
        """Failures of the server in a row."""
        self.down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None
        self._cold_call = False

    @property
    def warm(self) -> bool:
        """Whether the model answered within its idle TTL (so it is still loaded)."""
        return time.monotonic() < self.warm_until

    @property
    def state(self) -> str:
        """ "ready", "cold" (the next reply may wait for the model to load), "warming" (a
        warm-up or a cold call is under way: replies do not ask) or "down"."""
        if self.down_since is not None:
            return "down"
        if self.warm:
            return "ready"
        probing = self._probe is not None and not self._probe.done()
        return "warming" if probing or self._cold_call else "cold"

    def bound_s(self) -> float | None:
        """How long the next reply may wait: the ordinary bound while warm, the first-call
        allowance while cold, None (do not ask) while warming or down."""
        state = self.state
        if state == "ready":
            return self.warm_bound_s
        return self.cold_bound_s if state == "cold" else None

    def down_s(self) -> float | None:
        """Seconds since the server went down (None while it is not)."""
        return None if self.down_since is None else time.monotonic() - self.down_since

    @contextlib.contextmanager
    def call(self) -> Iterator[bool]:
        """Around one reply's call: yields whether it is the cold call (others wait it out
        with the lexicon); a server failure inside counts (and is raised on)."""
        cold = not self.warm
        self._cold_call = self._cold_call or cold
        try:
            yield cold
        except SERVER_FAILURES as exc:
            self.failures += 1
            if cold or self.failures >= OPEN_AFTER:
                self.went_down(exc)
            raise
        finally:
            if cold:
                self._cold_call = False

    def answered(self) -> None:
        """The server answered (even a refusal): it is up and its model loaded."""
        self.warm_until = time.monotonic() + self.ttl_s
        self.failures = 0
        if self.down_since is not None:
            log.info("%s answers again after %.0fs", self.name, self.down_s())
            self.down_since = None

    def went_down(self, exc: BaseException) -> None:
        """Mark the server down (once) and probe it in the background until it answers."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(
                "%s is not answering (%s); replies do without it until it answers again "
                "(asked in the background)",
                self.name,
                str(exc) or type(exc).__name__,
            )
        self._start_probe()

    def start_warming(self) -> None:
        """Warm the model in the background unless it is warm or being warmed; never awaited
        by a reply."""
        if self.state == "cold":
            self._start_probe()

    def _start_probe(self) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_answered(), name="llm-probe")

    async def ping_once(self) -> None:
        """One ping within the cold allowance. Any answer, a refusal too, marks the server
        up; SERVER_FAILURES (no answer) are raised."""
        try:
            async with asyncio.timeout(self.cold_bound_s):
                await self.ping()
        except SERVER_FAILURES:
            raise
        except Exception:  # any answer at all: the server is up
            pass
        self.answered()

    async def _probe_until_answered(self) -> None:
        """Pings, backing off, until the server answers."""
        backoff = Backoff(PROBE_FIRST_S, PROBE_MAX_S)
        started = time.monotonic()
        while True:
            try:
                await self.ping_once()
            except SERVER_FAILURES as exc:
                self.went_down(exc)
                await asyncio.sleep(backoff.failed())
                continue
            log.info("%s warm in %.1fs", self.name, time.monotonic() - started)
            return

    async def close(self) -> None:
        """Stop a warm-up or probe still running."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
