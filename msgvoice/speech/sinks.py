"""What a job's encode loop feeds: an audio file, a response's encoder, or (a job its worker
finished) the finished output itself; and whose turn it is to encode in the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Protocol

from msgvoice.config import AudioConfig
from msgvoice.sound.audio import Shaping
from msgvoice.sound.encoder import AudioError
from msgvoice.sound.files import write_file
from msgvoice.speech.synthesis import Output, Synthesis
from msgvoice.worker.protocol import OutputParams, Samples


class Sink(Protocol):
    """What the encode loop feeds: an audio file or a response's encoder."""

    rate: int

    def start(self) -> bytes: ...
    def feed(self, samples: Samples) -> bytes: ...
    def abort(self) -> None: ...


class Finished:
    """The sink of a job its worker finished: the output's bytes are all there is."""

    def __init__(self, output: Output, path: Path | None = None) -> None:
        self.output, self.path, self.rate = output, path, output.rate

    def start(self) -> bytes:
        """The whole output."""
        return self.output.data

    def feed(self, samples: Samples) -> bytes:
        raise AssertionError("a finished job takes no more audio")

    def finish(self) -> bytes:
        """Nothing is left to encode."""
        return b""

    def header(self) -> bytes:
        """The output carries its own header."""
        return b""

    def abort(self) -> None:
        """Nothing half made to drop."""

    def commit(self) -> Path:
        """The output as the job's file (atomically); AudioError when there is no audio."""
        assert self.path is not None
        if not self.output.frames:
            raise AudioError(f"no audio to write to {self.path.name}")
        return write_file(self.path, self.output.data)

    @property
    def duration_s(self) -> float:
        """Seconds of audio in the output."""
        return self.output.duration_s


async def encoded(encoding: asyncio.Future[tuple[bytes, float]] | None) -> bool:
    """Wait for a segment's encode (if there is one under way); whether there was one. The
    wait is shielded: a cancel must not mark the encode done while its thread still runs."""
    if encoding is None:
        return False
    await asyncio.shield(encoding)
    return True


def finishing(
    fmt: str, streaming: bool, stretch: float, settings: AudioConfig, shaping: Shaping
) -> OutputParams:
    """What a worker needs to finish a job of one segment as the daemon would."""
    return {
        "format": fmt,
        "streaming": streaming,
        "opus_rate_hz": settings.opus_rate_hz,
        "opus_complexity": settings.opus_complexity,
        "opus_bitrate_kbps": settings.opus_bitrate_kbps,
        "fade_ms": shaping.fade_ms,
        "gap_ms": shaping.gap_ms,
        "silence_db": shaping.silence_db,
        "stretch": stretch,
    }


ENCODES_AT_ONCE = 2
"""Jobs of several segments encoded in the daemon at a time (the rest wait, no encoder
open): 16 300-character mp3 streams on 2 workers peaked at 149 MB with all of them open,
108 MB so, and the median stream took 3.1 s against 4.7 s (the same work, finished in turn
rather than all together)."""


class Turns:
    """Whose turn it is to encode in the daemon: at most ENCODES_AT_ONCE jobs, first come
    first served; a job finished by its worker needs no turn."""

    def __init__(self) -> None:
        self._free = asyncio.Semaphore(ENCODES_AT_ONCE)

    async def open(
        self, open_sink: Callable[[Synthesis], Sink], first: Synthesis, held: AsyncExitStack
    ) -> Sink:
        """The job's sink, once it has a turn (kept until `held` closes)."""
        if first.output is None:
            await held.enter_async_context(self._free)
        return await asyncio.to_thread(open_sink, first)
