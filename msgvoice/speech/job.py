"""A speech job: what to speak, how it is going, and what came out."""

from __future__ import annotations

import errno
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msgvoice.speech.emotion import EmotionResult

if TYPE_CHECKING:
    from msgvoice.speech.synthesis import Synthesis

EXHAUSTED_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE})
"""The machine ran out of something that comes back by itself: disk space, open files."""
TRANSIENT_ERRNOS = EXHAUSTED_ERRNOS | {errno.EIO, errno.EAGAIN, errno.ENOMEM, errno.EINTR}
"""OS errors worth another try later (the rest, such as a missing file, never heal)."""


def exhausted(exc: BaseException) -> bool:
    """Whether an error means disk space or open files ran out (sqlite's "database or disk
    is full" and "unable to open database file" included): a state of the daemon that new
    work is refused in and accepted work waits out, not a failure of the work."""
    if isinstance(exc, OSError):
        return exc.errno in EXHAUSTED_ERRNOS
    message = str(exc).lower()
    return isinstance(exc, sqlite3.Error) and ("full" in message or "unable to open" in message)


def transient(exc: BaseException) -> bool:
    """Whether an OS error may heal by itself (exhausted resources, I/O trouble)."""
    return exhausted(exc) or (isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS)


class SpeechError(ValueError):
    """A message that cannot be spoken as asked (nothing to say, too long, unknown voice)."""


@dataclass(frozen=True)
class SpeechJob:
    """What to speak (and, for `speak`, where to put it)."""

    job_id: str
    text: str
    out: Path = field(default_factory=Path)
    fmt: str = "ogg"
    style: str | None = None
    voice: str | None = None
    timeout_cap_s: float | None = None
    seed: int | None = None
    """Seed for sampling engines (eSpeak is reproducible without one)."""
    speed: float = 1.0
    """Multiplies the speaking rate (engines that take prosody)."""
    vector: tuple[float, ...] | None = None
    """An explicit emotion vector for this job (wins over style and LLM)."""
    lead_clause: bool = False
    """Speak the opening clause as a segment of its own (sooner first audio when streaming)."""
    emotion: EmotionResult | None = None
    """The job's emotion when it was resolved ahead of its turn (`Speaker.feel`)."""


@dataclass
class Report:
    """How a job is being made, filled in as its segments are spoken."""

    emotion: EmotionResult | None = None
    segments: int = 0
    engines: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {"encode_ms": 0.0})
    unseeded_why: str | None = None

    def add(self, synthesis: Synthesis) -> None:
        """Count one spoken segment's worker figures (and engine stages) in."""
        self.timings["synth_ms"] += synthesis.synth_s * 1000
        self.timings["worker_ms"] += synthesis.wall_s * 1000
        if synthesis.output is not None:  # encoded by the worker
            self.timings["encode_ms"] += synthesis.output.encode_s * 1000
        for stage, ms in synthesis.stages.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + ms
        self.unseeded_why = self.unseeded_why or synthesis.unseeded_why


@dataclass
class SpeechResult:
    """A finished audio file and how it was made."""

    path: Path
    format: str
    duration_s: float
    engine: str
    emotion: EmotionResult
    segments: int
    timings: dict[str, float] = field(default_factory=dict)
    fallback_from: str | None = None
    """The main engine, when it could not start and a fallback spoke instead."""

    def as_json(self) -> dict[str, Any]:
        """The `say --json` object."""
        return {
            "path": str(self.path),
            "format": self.format,
            "duration_s": round(self.duration_s, 3),
            "engine": self.engine,
            "segments": self.segments,
            "emotion": self.emotion.as_json(),
            "fallback_from": self.fallback_from,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }
