"""One message's path: segments → emotion → worker → joined, encoded audio file.

Encoding runs in a thread and overlaps the worker's synthesis of the next segment: for fast
engines the encoder (Opus ~60× real time) is most of the cost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msgvoice import audio, text
from msgvoice.config import Config
from msgvoice.emotion import EmotionResult, Emotions, to_prosody
from msgvoice.samples import Samples
from msgvoice.supervisor import Supervisor, SynthRequest

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

    def as_json(self) -> dict[str, Any]:
        """The `say --json` object."""
        return {
            "path": str(self.path),
            "format": self.format,
            "duration_s": round(self.duration_s, 3),
            "engine": self.engine,
            "segments": self.segments,
            "emotion": self.emotion.as_json(),
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
        }


class Speaker:
    """Turns text into an audio file through the supervised worker."""

    def __init__(self, config: Config, supervisor: Supervisor, emotions: Emotions) -> None:
        self.config = config
        self.supervisor = supervisor
        self.emotions = emotions
        self.shaping = audio.Shaping(
            config.audio.fade_ms, config.audio.gap_ms, config.audio.silence_db
        )

    def segments(self, message: str) -> list[str]:
        """The segments a message is spoken in; SpeechError when there is nothing to say."""
        if len(message) > self.config.text.max_chars:
            raise SpeechError(
                f"text is {len(message)} characters; the limit is {self.config.text.max_chars}"
            )
        pieces = text.segment(message, self.config.text.segment_chars)
        if not pieces:
            raise SpeechError("nothing to speak")
        return pieces

    async def speak(self, job: SpeechJob, progress: Progress | None = None) -> SpeechResult:
        """Synthesise `job.text` into `job.out`; the file appears only when complete."""
        started = time.perf_counter()
        pieces = self.segments(job.text)
        emotion = await self.emotions.resolve(job.style, pieces)
        emotion_ms = (time.perf_counter() - started) * 1000
        timings = {"emotion_ms": emotion_ms, "synth_ms": 0.0, "worker_ms": 0.0, "encode_ms": 0.0}
        writer: audio.AudioWriter | None = None
        encoding: asyncio.Task[float] | None = None
        try:
            for i, (piece, vector) in enumerate(zip(pieces, emotion.vectors, strict=True)):
                request = SynthRequest(
                    job.job_id,
                    piece,
                    job.voice or self.config.tts.voice,
                    to_prosody(vector),
                    vector,
                    job.timeout_cap_s,
                )
                synthesis = await self.supervisor.synthesize(request)
                timings["synth_ms"] += synthesis.synth_s * 1000
                timings["worker_ms"] += synthesis.wall_s * 1000
                if writer is None:
                    rate = audio.output_rate(
                        job.fmt, synthesis.sample_rate, self.config.audio.opus_rate_hz
                    )
                    writer = await asyncio.to_thread(audio.AudioWriter, job.out, job.fmt, rate)
                if encoding is not None:
                    timings["encode_ms"] += await encoding
                encoding = asyncio.create_task(
                    asyncio.to_thread(
                        self._encode, writer, synthesis.samples, synthesis.sample_rate, i > 0
                    )
                )
                if progress is not None:
                    progress(i + 1, len(pieces))
            assert writer is not None and encoding is not None
            timings["encode_ms"] += await encoding
            await asyncio.to_thread(writer.commit)
        except BaseException:
            if encoding is not None and not encoding.done():
                await asyncio.wait({encoding}, timeout=30)
            if writer is not None:
                writer.abort()
            raise
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        log.info(
            "spoke job=%s segments=%d chars=%d duration_s=%.2f source=%s total_ms=%.0f",
            job.job_id,
            len(pieces),
            sum(map(len, pieces)),
            writer.duration_s,
            emotion.source,
            timings["total_ms"],
        )
        return SpeechResult(
            job.out,
            job.fmt,
            writer.duration_s,
            self.supervisor.engine,
            emotion,
            len(pieces),
            timings,
        )

    def _encode(
        self, writer: audio.AudioWriter, samples: Samples, rate: int, after_gap: bool
    ) -> float:
        """Shape one segment and feed it to the encoder; returns milliseconds spent."""
        started = time.perf_counter()
        shaped = audio.shape_segment(samples, rate, self.shaping)
        if after_gap:
            writer.write(audio.gap(writer.rate, self.shaping))
        writer.write(audio.resample(shaped, rate, writer.rate))
        return (time.perf_counter() - started) * 1000
