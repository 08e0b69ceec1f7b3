"""One message's path: segments → emotion → worker → joined, encoded audio file.

Encoding runs in a thread and overlaps the worker's synthesis of the next segment: for fast
engines the encoder (Opus ~60× real time) is most of the cost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from msgvoice import audio, text
from msgvoice.config import Config
from msgvoice.emotion import EmotionResult, Emotions, to_prosody
from msgvoice.samples import Samples
from msgvoice.supervisor import Supervisor, Synthesis, SynthRequest, WorkerUnavailable

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (segments done, segments in all)."""


class SpeechError(ValueError):
    """A message that cannot be spoken (nothing to say, too long)."""


@dataclass(frozen=True)
class SpeechJob:
    """What to speak and where to put it."""

    job_id: str
    text: str
    out: Path
    fmt: str
    style: str | None = None
    voice: str | None = None
    timeout_cap_s: float | None = None
    seed: int | None = None
    """Seed for sampling engines (eSpeak is reproducible without one)."""
    speed: float = 1.0
    """Multiplies the speaking rate (engines that take prosody)."""
    vector: tuple[float, ...] | None = None
    """An explicit emotion vector for this job (wins over style and LLM)."""
    lead_sentence: bool = False
    """Speak the first sentence as a segment of its own (sooner first audio when streaming)."""


@dataclass
class Report:
    """How a job is being made, filled in as its segments are spoken."""

    emotion: EmotionResult | None = None
    segments: int = 0
    engines: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    unseeded_why: str | None = None


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


class Speaker:
    """Turns text into audio through the supervised worker (or a fallback's)."""

    def __init__(self, config: Config, supervisors: list[Supervisor], emotions: Emotions) -> None:
        self.config = config
        self.supervisors = supervisors
        """The main engine's supervisor first, then the fallbacks' in order."""
        self.emotions = emotions
        self.shaping = audio.Shaping(
            config.audio.fade_ms, config.audio.gap_ms, config.audio.silence_db
        )

    @property
    def supervisor(self) -> Supervisor:
        """The main engine's supervisor."""
        return self.supervisors[0]

    def active_engine(self) -> str:
        """The engine new jobs will use: the main one unless it is marked failed."""
        main = self.supervisor
        if main.state != "failed" or len(self.supervisors) == 1:
            return main.engine
        return f"{self.supervisors[1].engine}（{main.engine} 不可用，已回退）"

    def segments(self, message: str, lead_sentence: bool = False) -> list[str]:
        """The segments a message is spoken in; SpeechError when there is nothing to say."""
        if len(message) > self.config.text.max_chars:
            raise SpeechError(
                f"text is {len(message)} characters; the limit is {self.config.text.max_chars}"
            )
        pieces = text.segment(message, self.config.text.segment_chars)
        if not pieces:
            raise SpeechError("nothing to speak")
        first = text.sentences(pieces[0])
        if lead_sentence and len(first) > 1:
            pieces[:1] = [first[0], pieces[0][len(first[0]) :].strip()]
        return pieces

    async def syntheses(self, job: SpeechJob, report: Report) -> AsyncIterator[Synthesis]:
        """The job's segments as the worker speaks them, one at a time, in order."""
        started = time.perf_counter()
        pieces = self.segments(job.text, job.lead_sentence)
        emotion = await self.emotions.resolve(job.style, pieces, job.vector)
        report.emotion, report.segments = emotion, len(pieces)
        report.timings.update(
            emotion_ms=(time.perf_counter() - started) * 1000, synth_ms=0.0, worker_ms=0.0
        )
        voice = job.voice or self.config.tts.voice
        for piece, vector in zip(pieces, emotion.vectors, strict=True):
            prosody = to_prosody(vector)
            prosody = replace(prosody, rate=prosody.rate * job.speed)
            request = SynthRequest(
                job.job_id, piece, voice, prosody, vector, job.timeout_cap_s, job.seed
            )
            synthesis = await self._synthesize(request, report.engines)
            _add_times(report.timings, synthesis)
            report.unseeded_why = report.unseeded_why or synthesis.unseeded_why
            yield synthesis

    def piece(self, synthesis: Synthesis, rate: int, after_gap: bool) -> Samples:
        """One segment as it goes into the joined output at `rate`: trimmed, faded, resampled,
        after the gap that separates it from the one before."""
        shaped = audio.shape_segment(synthesis.samples, synthesis.sample_rate, self.shaping)
        joined = audio.resample(shaped, synthesis.sample_rate, rate)
        return np.concatenate([audio.gap(rate, self.shaping), joined]) if after_gap else joined

    async def _synthesize(self, request: SynthRequest, used: list[str]) -> Synthesis:
        """Ask the main engine; while it cannot start, the fallbacks in order. The engine that
        spoke is appended to `used`."""
        for supervisor in self.supervisors:
            if supervisor is not self.supervisor:
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

    async def speak(self, job: SpeechJob, progress: Progress | None = None) -> SpeechResult:
        """Synthesise `job.text` into `job.out`; the file appears only when complete. Each
        segment is encoded in a thread while the worker speaks the next one."""
        started = time.perf_counter()
        report = Report(timings={"encode_ms": 0.0})
        writer: audio.AudioWriter | None = None
        encoding: asyncio.Task[float] | None = None
        try:
            async for synthesis in self.syntheses(job, report):
                if writer is None:
                    rate = audio.output_rate(
                        job.fmt, synthesis.sample_rate, self.config.audio.opus_rate_hz
                    )
                    writer = await asyncio.to_thread(audio.AudioWriter, job.out, job.fmt, rate)
                if encoding is not None:
                    report.timings["encode_ms"] += await encoding
                encoding = asyncio.create_task(
                    asyncio.to_thread(self._encode, writer, synthesis, encoding is not None)
                )
                if progress is not None:
                    progress(len(report.engines), report.segments)
            assert writer is not None and encoding is not None and report.emotion is not None
            report.timings["encode_ms"] += await encoding
            await asyncio.to_thread(writer.commit)
        except BaseException:
            if encoding is not None and not encoding.done():
                await asyncio.wait({encoding}, timeout=30)
            if writer is not None:
                writer.abort()
            raise
        timings = report.timings
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        if writer.duration_s:
            timings["rtf"] = timings["total_ms"] / 1000 / writer.duration_s
        engine = report.engines[-1]
        log.info(
            "spoke job=%s segments=%d chars=%d duration_s=%.2f engine=%s source=%s total_ms=%.0f",
            job.job_id,
            report.segments,
            len(job.text),
            writer.duration_s,
            engine,
            report.emotion.source,
            timings["total_ms"],
        )
        fallback = self.supervisor.engine if engine != self.supervisor.engine else None
        return SpeechResult(
            job.out,
            job.fmt,
            writer.duration_s,
            engine,
            report.emotion,
            report.segments,
            timings,
            fallback_from=fallback,
        )

    def _encode(self, writer: audio.AudioWriter, synthesis: Synthesis, after_gap: bool) -> float:
        """Feed one segment to the encoder; returns milliseconds spent."""
        started = time.perf_counter()
        writer.write(self.piece(synthesis, writer.rate, after_gap))
        return (time.perf_counter() - started) * 1000


def _add_times(timings: dict[str, float], synthesis: Synthesis) -> None:
    """Add one segment's worker figures (and engine stages) to the job's timings."""
    timings["synth_ms"] += synthesis.synth_s * 1000
    timings["worker_ms"] += synthesis.wall_s * 1000
    for stage, ms in synthesis.stages.items():
        timings[stage] = timings.get(stage, 0.0) + ms
