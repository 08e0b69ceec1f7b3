"""Encoding through PyAV (FFmpeg's libopus, LAME, AAC, FLAC): bytes as pieces arrive (files
written atomically are in `files.py`).

`Encoder` turns float32 mono pieces into one format's bytes. Formats whose muxer needs no
seeking back (OGG/Opus, ADTS/AAC, MP3, FLAC) give bytes after every piece when streaming:
their muxer writes to a stream it cannot seek, so FFmpeg leaves out what it would go back for
(MP3's Xing frame; FLAC's STREAMINFO then says "length unknown"). A whole MP3 or FLAC is
written seekable and gets them complete.
M4A gives its bytes at the end; PCM and WAV are written here (a streamed WAV carries unknown
sizes, 0xFFFFFFFF, as is usual), and CAF/Opus goes through msgvoice's own CAF writer.

Codec settings were measured on eSpeak speech (scripts/bench --only encoders; PESQ-WB): LAME
at 64 kbps with compression_level 7 scores 4.29 in half the time of its default (32 kbps,
level 3: 3.45); FFmpeg's AAC with `aac_coder=fast` scores 4.25 in a sixth of the time of its
default two-loop search (4.12).
"""

from __future__ import annotations

import contextlib
import functools
import io
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import av
import numpy as np
from av.audio.codeccontext import AudioCodecContext

from msgvoice.sound.caf import write_caf_opus
from msgvoice.speech.formats import Format
from msgvoice.worker.samples import Samples


class AudioError(ValueError):
    """Audio that cannot be written or read."""


@dataclass(frozen=True)
class EncodeSettings:
    """Encoder knobs (from `[audio]`)."""

    opus_complexity: int = 0
    """libopus complexity 0-10; 0 is several times faster and as good on speech."""
    opus_bitrate_kbps: int = 64
    """Opus bit rate for voice notes and API responses (constrained VBR: the size follows)."""


def to_int16(samples: Samples) -> bytes:
    """Little-endian 16-bit PCM (rounded, clipped at full scale)."""
    return np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2").tobytes()


def wav_header(rate: int, data_bytes: int | None) -> bytes:
    """A 16-bit mono RIFF/WAVE header; unknown sizes (streaming) are 0xFFFFFFFF."""
    data = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", data)


class _Sink(io.RawIOBase):
    """A write-only stream for a muxer that never seeks: bytes are collected as they come."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        out, self.buffer = bytes(self.buffer), bytearray()
        return out


CODEC_OPTIONS: dict[str, tuple[dict[str, str], int]] = {
    "libmp3lame": ({"compression_level": "7"}, 64_000),
    "aac": ({"aac_coder": "fast"}, 0),
}
"""FFmpeg options and bit rate (0: the codec's own) per codec (see the module doc)."""
FOLLOWING = {"mp3": {"id3v2_version": "0"}}
"""Muxer options for a stream whose bytes follow another's (a joined job's next segment): no
file header in the middle of the stream (MP3's ID3v2 tag)."""


class _Av:
    """One PyAV encoder: a container with one mono stream, or (CAF) bare Opus packets."""

    def __init__(
        self, fmt: Format, rate: int, settings: EncodeSettings, streaming: bool, follows: bool
    ) -> None:
        self.fmt, self.rate, self.frames = fmt, rate, 0
        sink = fmt.streams and (streaming or not fmt.completes_header)
        self.out: _Sink | io.BytesIO = _Sink() if sink else io.BytesIO()
        self._packets: list[bytes] = []
        self._container: Any = None
        try:
            if fmt.container == "caf":
                codec = cast(AudioCodecContext, av.CodecContext.create(fmt.codec, "w"))
                codec.sample_rate, codec.layout, codec.format = rate, "mono", "flt"
                self._codec: Any = codec
            else:
                options = FOLLOWING.get(fmt.container, {}) if follows else {}
                self._container = av.open(
                    self.out, "w", format=fmt.container, container_options=options
                )
                self._codec = self._container.add_stream(fmt.codec, rate=rate, layout="mono")
            options, bit_rate = CODEC_OPTIONS.get(fmt.codec, ({}, 0))
            if bit_rate:
                self._codec.bit_rate = bit_rate
            if options:
                self._codec.options = options
            if fmt.codec == "libopus":
                self._codec.bit_rate = settings.opus_bitrate_kbps * 1000
                self._codec.options = {
                    "compression_level": str(settings.opus_complexity),
                    "vbr": "constrained",  # a predictable size (Telegram's 1 MB voice notes)
                }
            if fmt.container == "caf":
                self._codec.open()
        except (av.FFmpegError, ValueError) as exc:
            raise AudioError(f"cannot encode {fmt.name} at {rate} Hz: {exc}") from exc

    def write(self, samples: Samples | None) -> bytes:
        """Encode `samples` (None: flush); the bytes the muxer let go of so far. A piece goes
        in as 200 ms frames: one frame of a whole 30 s segment made PyAV hold several copies
        of it at once (its frame, its FIFO, the codec's format), per request under way."""
        step = self.rate // 5
        frames = (
            [None]
            if samples is None
            else [samples[i : i + step] for i in range(0, samples.size, step)]
        )
        for chunk in frames:
            self._encode(chunk)
        return self.out.take() if isinstance(self.out, _Sink) else b""

    def _encode(self, samples: Samples | None) -> None:
        frame = None
        if samples is not None:
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts = self.rate, self.frames
            self.frames += samples.size
        for packet in self._codec.encode(frame):
            if self._container is not None:
                self._container.mux(packet)
            else:
                self._packets.append(bytes(packet))

    def finish(self) -> bytes:
        """Flush the encoder and close the container; the remaining bytes."""
        tail = self.write(None)
        if self._container is None:
            # OpusHead: the encoder's delay ("pre-skip") at 48 kHz in bytes 10-11.
            pre_skip = struct.unpack_from("<H", self._codec.extradata, 10)[0]
            write_caf_opus(
                self.out,
                self._packets,
                rate=self.rate,
                frames_per_packet=self._codec.frame_size,
                valid_frames=self.frames,
                priming_frames=pre_skip * self.rate // 48_000,
            )
        else:
            self._container.close()
        rest = self.out.take() if isinstance(self.out, _Sink) else self.out.getvalue()
        return tail + rest

    def abort(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()


class Encoder:
    """Turns pieces (float32 at `rate`) into the bytes of one format, as they come."""

    def __init__(
        self,
        fmt: Format,
        rate: int,
        streaming: bool,
        settings: EncodeSettings | None = None,
        *,
        follows: bool = False,
    ) -> None:
        self.fmt, self.rate, self.streaming = fmt, rate, streaming
        self.pcm_bytes = 0
        self.frames = 0
        raw = fmt.container == "raw"
        self._av = None if raw else _Av(fmt, rate, settings or EncodeSettings(), streaming, follows)

    def start(self) -> bytes:
        """Bytes before the first piece (a streamed WAV's header)."""
        return wav_header(self.rate, None) if self.fmt.name == "wav" and self.streaming else b""

    def feed(self, piece: Samples) -> bytes:
        """Bytes ready after one more piece."""
        self.frames += piece.size
        if self._av is not None:
            return self._av.write(piece) if piece.size else b""
        data = to_int16(piece)
        self.pcm_bytes += len(data)
        return data

    def finish(self) -> bytes:
        """The remaining bytes (all of them for formats that do not stream)."""
        return self._av.finish() if self._av is not None else b""

    def header(self) -> bytes:
        """What goes before everything else once the whole size is known (a WAV's header)."""
        if self.fmt.name == "wav" and not self.streaming:
            return wav_header(self.rate, self.pcm_bytes)
        return b""

    def abort(self) -> None:
        """Drop anything half made."""
        if self._av is not None:
            self._av.abort()

    @property
    def duration_s(self) -> float:
        """Seconds fed so far."""
        return self.frames / self.rate


@functools.cache
def priming(fmt: Format, rate: int) -> int:
    """The samples of silence a decoder plays before the first one fed to a new stream of
    `fmt` at `rate` (the encoder's delay: LAME's 1,105, FFmpeg's AAC 1,024, as FFmpeg stamps
    the first packet), 0 for PCM. Asked of the encoder once, with one frame of silence."""
    if fmt.container == "raw":
        return 0
    codec = cast(AudioCodecContext, av.CodecContext.create(fmt.codec, "w"))
    takes = codec.codec.audio_formats or ()
    codec.sample_rate, codec.layout, codec.format = rate, "mono", next(iter(takes), "flt")
    codec.open()
    frame = av.AudioFrame(format=codec.format.name, layout="mono", samples=codec.frame_size or 1024)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate, frame.pts = rate, 0
    packets = [*codec.encode(frame), *codec.encode(None)]
    return max(0, -(packets[0].pts or 0)) if packets else 0


def encode_whole(
    fmt: Format, rate: int, samples: Samples, streaming: bool, settings: EncodeSettings
) -> bytes:
    """All of `samples` as one response or file of `fmt`: what an Encoder fed them in one
    piece gives, header included (a streamed WAV's unknown sizes when `streaming`)."""
    return encode_all(fmt, rate, [samples], streaming, settings)


def encode_all(
    fmt: Format,
    rate: int,
    pieces: Iterable[Samples],
    streaming: bool,
    settings: EncodeSettings,
    *,
    follows: bool = False,
) -> bytes:
    """`encode_whole` of the pieces joined, each encoded as it comes (they may still be in
    the making: a segment being spoken); `follows`: the bytes go after another stream's."""
    encoder = Encoder(fmt, rate, streaming, settings, follows=follows)
    try:
        body = [encoder.start(), *(encoder.feed(piece) for piece in pieces), encoder.finish()]
    except BaseException:
        encoder.abort()
        raise
    return encoder.header() + b"".join(body)
