"""The engines a speaker can use: the main engine's worker pool, then the fallbacks' in order.

A pool holds `worker.count` supervised workers of one engine; each request takes whichever is
free, so different chats are spoken side by side while each worker keeps its own supervision.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from msgvoice.speech.supervisor import Supervisor, Synthesis, SynthRequest, WorkerUnavailable

log = logging.getLogger(__name__)


class WorkerPool:
    """Supervisors of one engine; a request waits for a free one."""

    def __init__(self, supervisors: list[Supervisor]) -> None:
        if not supervisors:
            raise ValueError("a worker pool needs at least one supervisor")
        self.supervisors = supervisors
        self._free = list(supervisors)  # the one freed last at the end
        self._slots = asyncio.Semaphore(len(supervisors))
        self.rate = 0
        """The engine's sample rate, as its last answer gave it (0: none yet)."""

    @property
    def engine(self) -> str:
        """The engine's name."""
        return self.supervisors[0].engine

    @property
    def failed(self) -> bool:
        """Every worker is marked failed."""
        return all(s.state == "failed" for s in self.supervisors)

    @property
    def engine_facts(self) -> dict[str, Any]:
        """What the engine said about itself (from the first worker that started)."""
        return next((s.engine_facts for s in self.supervisors if s.engine_facts), {})

    async def synthesize(self, request: SynthRequest) -> Synthesis:
        """Speak one request on a free worker: the one freed last, whose caches are warm (one
        chat's /tts of 2 characters after another, 2 workers: 11.4 and 12.0 ms going round,
        9.9 and 11.3 ms so, in two runs), unless it cannot start now and another free one
        can."""
        async with self._slots:
            usable = [s for s in self._free if s.state not in ("failed", "backoff")]
            supervisor = (usable or self._free)[-1]
            self._free.remove(supervisor)
            try:
                synthesis = await supervisor.synthesize(request)
            finally:
                self._free.append(supervisor)
            self.rate = synthesis.sample_rate
            return synthesis


class EngineChain:
    """Asks the main engine's pool; while it cannot start, the fallbacks in order."""

    def __init__(self, pools: list[WorkerPool], default_voice: str) -> None:
        if not pools:
            raise ValueError("an engine chain needs at least one pool")
        self.pools = pools
        self.default_voice = default_voice

    @property
    def main(self) -> Supervisor:
        """The main engine's first supervisor."""
        return self.pools[0].supervisors[0]

    @property
    def rate(self) -> int:
        """The main engine's sample rate, once it has spoken (0 before)."""
        return self.pools[0].rate

    @property
    def workers(self) -> list[Supervisor]:
        """The main engine's supervisors."""
        return self.pools[0].supervisors

    def engines(self) -> list[str]:
        """The engine names: the main one, then the fallbacks."""
        return [p.engine for p in self.pools]

    def voices(self) -> list[str]:
        """The main engine's voice names, as its worker reported them."""
        listed = self.pools[0].engine_facts.get("voices")
        names = [str(v) for v in listed] if isinstance(listed, list) else []
        return names or [self.default_voice]

    def voice_named(self, name: str) -> str | None:
        """The main engine's spelling of voice `name`, matched regardless of case (`en+f3` is
        `en` with a variant; `a,b` blends where the engine can), or None if it has none."""
        spelt = {v.lower(): v for v in self.voices()}
        parts = [p.strip() for p in name.split(",")] if self.blends_voices() else [name]
        found = []
        for part in parts:
            voice, plus, variant = part.partition("+")
            if voice.lower() not in spelt:
                return None
            found.append(spelt[voice.lower()] + plus + variant)
        return ",".join(found)

    def languages(self) -> dict[str, list[str]]:
        """The main engine's voices → the languages each speaks, where the engine says."""
        listed = self.pools[0].engine_facts.get("languages")
        return dict(listed) if isinstance(listed, dict) else {}

    def speeds(self, speed: float) -> tuple[float, float]:
        """A job's `speed` as (the engine's part, the time stretch the daemon adds). An engine
        scales durations exactly only within the `exact_speed` range its facts give (Kokoro's
        and FastSpeech2's duration divisors; eSpeak's rate is not proportional, so none):
        the rest is stretched, so the length is always exactly 1/speed."""
        lo, hi = self.pools[0].engine_facts.get("exact_speed") or (1.0, 1.0)
        engine = min(max(speed, lo), hi)
        return engine, engine / speed

    def blends_voices(self) -> bool:
        """Whether the main engine speaks a blend `a,b` of its voices (Kokoro does)."""
        return bool(self.pools[0].engine_facts.get("voice_blends"))

    def active_engine(self) -> tuple[str, str | None]:
        """The engine new jobs will use, and the main engine when that is a fallback because
        the main one is marked failed."""
        main = self.pools[0]
        if not main.failed or len(self.pools) == 1:
            return main.engine, None
        return self.pools[1].engine, main.engine

    async def synthesize(self, request: SynthRequest, used: list[str]) -> Synthesis:
        """Speak one request; the engine that spoke is appended to `used`."""
        for pool in self.pools:
            if pool is not self.pools[0]:
                request = replace(request, voice=None)  # the main engine's voice names
            try:
                synthesis = await pool.synthesize(request)
            except WorkerUnavailable as exc:
                if pool is self.pools[-1]:
                    raise
                log.warning(
                    "engine %s unavailable for job %s, falling back: %s",
                    pool.engine,
                    request.job_id,
                    exc,
                )
                continue
            used.append(pool.engine)
            return synthesis
        raise AssertionError("unreachable")
