"""What a job's encode loop feeds: an audio file, a response's encoder, or (a job its workers
finished) the finished outputs themselves; and whose turn it is to encode in the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from msgvoice.config import AudioConfig
from msgvoice.sound.audio import Shaping
from msgvoice.sound.encoder import AudioError, Encoder
from msgvoice.sound.files import write_file
from msgvoice.speech.synthesis import Output, Synthesis
from msgvoice.worker.protocol import OutputParams, Samples, finish_output, to_float32


class Sink(Protocol):
    """What the encode loop feeds: an audio file or a response's encoder."""

    rate: int

    def start(self) -> bytes: ...
    def feed(self, samples: Samples) -> bytes: ...
    def abort(self) -> None: ...


class Finished:
    """The sink of a job its workers finished: their outputs, joined, are all there is (one
    output; or, in a format that joins, one per segment, encoded apart: their bytes as they
    are, or their bare packets put into one stream by `joining`, an Encoder of the job's)."""

    def __init__(
        self, output: Output, path: Path | None = None, joining: Encoder | None = None
    ) -> None:
        self.path, self.rate, self.frames, self.joining = path, output.rate, 0, joining
        self._kept: list[bytes] = []  # a file's, written at commit
        try:
            self._first = self._took(output, joining.start() if joining else b"")
        except BaseException:
            self.abort()
            raise

    def start(self) -> bytes:
        """The first output's bytes (put into the stream when the sink was made)."""
        return self._first

    def join(self, output: Output) -> bytes:
        """The next segment's output, after the ones before (it is encoded at their rate)."""
        if output.rate != self.rate:
            raise AudioError(f"a segment came at {output.rate} Hz after {self.rate} Hz")
        return self._took(output)

    def _took(self, output: Output, before: bytes = b"") -> bytes:
        if self.joining is None:
            self.frames += output.frames
            data = before + output.data
        else:
            data = before + self.joining.join(output.data)
            self.frames = self.joining.frames
        if self.path is not None:
            self._kept.append(data)
        return data

    def feed(self, samples: Samples) -> bytes:
        raise AssertionError("a finished job takes no more audio")

    def finish(self) -> bytes:
        """The rest of the stream the packets were put into (nothing else is left)."""
        if self.joining is None:
            return b""
        data = self.joining.finish()
        self.frames = self.joining.frames
        return data

    def header(self) -> bytes:
        """The output carries its own header."""
        return b""

    def abort(self) -> None:
        """Drop the stream half made (nothing else is)."""
        if self.joining is not None:
            self.joining.abort()

    def commit(self) -> Path:
        """The outputs as the job's file (atomically); AudioError when there is no audio."""
        assert self.path is not None
        self._kept.append(self.finish())
        if not self.frames:
            raise AudioError(f"no audio to write to {self.path.name}")
        return write_file(self.path, b"".join(self._kept))

    @property
    def duration_s(self) -> float:
        """Seconds of audio in the outputs."""
        return self.frames / self.rate


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
    """What a worker needs to finish a job of one segment as the daemon would (the segments
    of a job that joins are asked for this, and how to join: `Speaker._joined`)."""
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
    first served; a job finished by its workers needs no turn, but a segment one of them
    could not finish takes one while it is finished here."""

    def __init__(self) -> None:
        self._free = asyncio.Semaphore(ENCODES_AT_ONCE)

    async def open(
        self, open_sink: Callable[[Synthesis], Sink], first: Synthesis, held: AsyncExitStack
    ) -> Sink:
        """The job's sink, once it has a turn (kept until `held` closes)."""
        if first.output is None:
            await held.enter_async_context(self._free)
        return await asyncio.to_thread(open_sink, first)

    async def finish(self, spoken: Synthesis, params: OutputParams) -> Synthesis:
        """A segment asked finished that its worker sent raw, finished here as the worker would
        have (`finish_output`, in a thread), once it is this one's turn."""
        async with self._free:
            samples = to_float32(spoken.samples)
            args = ([samples], spoken.sample_rate, params)
            made, data = await asyncio.to_thread(finish_output, *args)
        encoded = Output.of({"output": made, "payload": data})
        return replace(spoken, samples=samples[:0], output=encoded)
