"""The engines a speaker can use: the main engine's supervisor, then the fallbacks' in order."""

from __future__ import annotations

import logging
from dataclasses import replace

from msgvoice.speech.supervisor import Supervisor, Synthesis, SynthRequest, WorkerUnavailable

log = logging.getLogger(__name__)


class EngineChain:
    """Asks the main engine; while it cannot start, the fallbacks in order."""

    def __init__(self, supervisors: list[Supervisor], default_voice: str) -> None:
        if not supervisors:
            raise ValueError("an engine chain needs at least one supervisor")
        self.supervisors = supervisors
        self.default_voice = default_voice

    @property
    def main(self) -> Supervisor:
        """The main engine's supervisor."""
        return self.supervisors[0]

    def engines(self) -> list[str]:
        """The engine names: the main one, then the fallbacks."""
        return [s.engine for s in self.supervisors]

    def voices(self) -> list[str]:
        """The main engine's voice names, as its worker reported them."""
        listed = self.main.engine_facts.get("voices")
        names = [str(v) for v in listed] if isinstance(listed, list) else []
        return names or [self.default_voice]

    def active_engine(self) -> tuple[str, str | None]:
        """The engine new jobs will use, and the main engine when that is a fallback because
        the main one is marked failed."""
        if self.main.state != "failed" or len(self.supervisors) == 1:
            return self.main.engine, None
        return self.supervisors[1].engine, self.main.engine

    async def synthesize(self, request: SynthRequest, used: list[str]) -> Synthesis:
        """Speak one request; the engine that spoke is appended to `used`."""
        for supervisor in self.supervisors:
            if supervisor is not self.main:
                request = replace(request, voice=None)  # the main engine's voice names
            try:
                synthesis = await supervisor.synthesize(request)
            except WorkerUnavailable as exc:
                if supervisor is self.supervisors[-1]:
                    raise
                log.warning(
                    "engine %s unavailable for job %s, falling back: %s",
                    supervisor.engine,
                    request.job_id,
                    exc,
                )
                continue
            used.append(supervisor.engine)
            return synthesis
        raise AssertionError("unreachable")
