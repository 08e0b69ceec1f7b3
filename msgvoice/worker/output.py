"""A segment's finished output, made in the worker that spoke it.

When a job is one segment, or its format joins segments encoded apart (`Format.joins`), the
daemon asks for each segment's output rather than its samples (the `output` parameter of
`synthesize`): the worker shapes the segment, stretches it to the job's speed, resamples it
and encodes it, and sends back the finished file or response (or, to be joined, its stream
or bare packets). The encode then runs beside the synthesis, one per worker process, instead
of in the daemon next to every other job, and raw audio never crosses the pipe; from an
engine that streams (eSpeak), each piece is encoded while the engine speaks the next, and an
engine that takes the job's `Shape` shapes, stretches and resamples each piece itself as it
speaks. A worker whose interpreter lacks PyAV or soxr sends the samples as before, and the
daemon finishes them alike (`finish`).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NotRequired, Protocol, TypedDict

import numpy as np

from msgvoice.worker.samples import Samples

if TYPE_CHECKING:
    from msgvoice.sound.audio import Shaping

_NONE: Samples = np.zeros(0, dtype=np.float32)


class OutputParams(TypedDict):
    """`params["output"]` of a `synthesize` request: the segment's output, how (a job of one
    segment: the job's whole output)."""

    format: str
    """msgvoice's name of the format (`ogg`, `mp3`, `pcm`, ...)."""
    streaming: bool
    opus_rate_hz: int
    opus_complexity: int
    opus_bitrate_kbps: int
    fade_ms: float
    gap_ms: float
    silence_db: float
    stretch: float
    rate: NotRequired[int]
    """The output's sample rate (absent or 0: the format's own for the engine's)."""
    follows: NotRequired[bool]
    """The output follows another segment's in a joined job: it starts with the gap between
    them, less the silence a decoder plays first anyway (the encoder's priming), and has no
    file header (MP3's ID3 tag) to break the stream it joins."""
    packets: NotRequired[bool]
    """Answer with the encoder's bare packets (a joined job's segment in Opus: the daemon puts
    them into the job's one Ogg or CAF stream)."""


class OutputAnswer(TypedDict):
    """`result["output"]` of a `synthesize` answer: its payload is the output's bytes."""

    rate: int
    frames: int
    encode_s: float
    packets: NotRequired[bool]
    """The payload is bare packets, each after its `encoder.PACKET`."""


@functools.cache
def available() -> bool:
    """Whether this interpreter can encode (PyAV and soxr import)."""
    try:
        import msgvoice.sound.encoder  # noqa: F401, PLC0415 (optional in a worker)
    except ImportError:
        return False
    return True


def warm_up() -> None:
    """Import the encoders in the background, so the first job does not wait for PyAV."""
    threading.Thread(target=available, name="output-warm-up", daemon=True).start()


class Making(Protocol):
    """A job's output made as its segment is spoken (`audio.Pieces`)."""

    def feed(self, samples: Samples) -> Samples:
        """The output settled by one more spoken piece (float32)."""
        ...

    def finish(self) -> Samples:
        """The rest of the output."""
        ...


@dataclass(frozen=True)
class Shape:
    """How a job's spoken pieces (float32 at the engine's rate) become its output's, piece by
    piece: shaped, stretched and resampled. The worker applies it as the pieces come
    (`finish`); an engine that streams may apply it itself as it speaks (`stream`'s `shape`).
    Two make the same output when they are equal `at` the engine's rate."""

    format: str
    opus_rate_hz: int
    fade_ms: float
    gap_ms: float
    silence_db: float
    stretch: float
    rate: int = 0
    """The output's rate; 0: the format's own for the rate the pieces are spoken at."""

    @classmethod
    def of(cls, params: OutputParams) -> Shape:
        """The shaping a request's output parameters ask for."""
        return cls(
            params["format"],
            params["opus_rate_hz"],
            params["fade_ms"],
            params["gap_ms"],
            params["silence_db"],
            params["stretch"],
            params.get("rate", 0),
        )

    def __call__(self, rate: int) -> Making:
        from msgvoice.sound import audio  # noqa: PLC0415 (see available)

        return audio.Pieces(rate, self.out_rate(rate), self.shaping, self.stretch)

    @property
    def shaping(self) -> Shaping:
        from msgvoice.sound.audio import Shaping  # noqa: PLC0415 (see available)

        return Shaping(self.fade_ms, self.gap_ms, self.silence_db)

    def out_rate(self, rate: int) -> int:
        """The output's rate for pieces spoken at `rate`: what they are resampled to, and
        what the encoder is opened at."""
        from msgvoice.speech.formats import FORMATS, output_rate  # noqa: PLC0415

        return self.rate or output_rate(FORMATS[self.format].name, rate, self.opus_rate_hz)

    def at(self, rate: int) -> Shape:
        """This shaping for pieces spoken at `rate`, the output's rate spelt out."""
        return replace(self, rate=self.out_rate(rate))


def finish(
    spoken: Iterable[Samples], rate: int, params: OutputParams, shaped: bool = False
) -> tuple[OutputAnswer, bytes]:
    """The whole output of a segment spoken as `spoken` (float32 pieces at `rate`), each piece
    shaped and encoded as it comes: from an engine that streams, while it speaks the next.
    `shaped`: the pieces are the output's already (the engine applied `Shape`). `encode_s` is
    the time spent on the output, not waiting for the engine."""
    from msgvoice.sound import audio  # noqa: PLC0415 (see available)
    from msgvoice.sound.encoder import EncodeSettings, encode_all, priming  # noqa: PLC0415
    from msgvoice.speech.formats import FORMATS  # noqa: PLC0415

    started = time.perf_counter()
    shape, fmt = Shape.of(params), FORMATS[params["format"]]
    making = None if shaped else shape(rate)
    out_rate = shape.out_rate(rate)
    frames, waited = 0, 0.0

    def made() -> Iterator[Samples]:
        nonlocal frames, waited
        if params.get("follows"):  # counted whole: the decoder plays the priming as its start
            gap = audio.gap(out_rate, shape.shaping, shape.stretch)
            frames = gap.size
            yield gap[priming(fmt, out_rate) :]
        spoken_pieces = iter(spoken)
        while True:
            asked = time.perf_counter()
            samples = next(spoken_pieces, None)
            waited += time.perf_counter() - asked
            if samples is None:
                rest = _NONE if making is None else making.finish()
                frames += rest.size
                yield rest
                return
            piece = samples if making is None else making.feed(samples)
            frames += piece.size
            yield piece

    settings = EncodeSettings(params["opus_complexity"], params["opus_bitrate_kbps"])
    follows, packets = bool(params.get("follows")), bool(params.get("packets"))
    streaming = params["streaming"]
    data = encode_all(fmt, out_rate, made(), streaming, settings, follows=follows, packets=packets)
    answer: OutputAnswer = {
        "rate": out_rate,
        "frames": frames,
        "encode_s": time.perf_counter() - started - waited,
        "packets": packets,
    }
    return answer, data


def check(params: Any) -> OutputParams | None:
    """The request's output parameters when they ask for something this worker makes."""
    if not isinstance(params, dict) or not available():
        return None
    from msgvoice.speech.formats import FORMATS  # noqa: PLC0415

    return params if params.get("format") in FORMATS else None  # type: ignore[return-value]
