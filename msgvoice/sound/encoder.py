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
from fractions import Fraction
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


PACKET = struct.Struct("<HH")
"""Before each of a joined segment's bare packets: its duration (samples) and its size."""


class _Av:
    """One PyAV encoder: a container with one mono stream, or bare Opus packets (CAF's, or a
    joined job's segment's: `packets`); or the container the packets of a joined job's
    segments, encoded apart, are put into (`take`)."""

    def __init__(
        self,
        fmt: Format,
        rate: int,
        settings: EncodeSettings,
        streaming: bool,
        *,
        follows: bool = False,
        packets: bool = False,
    ) -> None:
        self.fmt, self.rate, self.frames, self.packets = fmt, rate, 0, packets
        sink = fmt.streams and (streaming or not fmt.completes_header)
        self.out: _Sink | io.BytesIO = _Sink() if sink else io.BytesIO()
        self._packets: list[tuple[bytes, int]] = []  # bare ones, with their durations
        self._container: Any = None
        self._taken: int | None = None  # where the next packet taken goes (joining)
        self._held: tuple[bytes, int] | None = None  # the last taken: whole or cut, not known yet
        bare = fmt.container == "caf" or packets
        try:
            if bare:
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
            if bare:
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
        return self._out()

    def _out(self) -> bytes:
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
                self._packets.append((bytes(packet), int(packet.duration or 0)))

    def take(self, data: bytes) -> bytes:
        """The bare packets of a joined job's next segment (`packets`, encoded apart), after
        the ones before; the bytes the muxer let go of. The last packet before them plays
        whole (the silence it was padded with is part of the gap); the last of theirs is held
        until it is known whether another segment follows."""
        if self._taken is None:  # the first: open the codec for the stream's header
            if self._container is not None:
                self._context.format = "flt"
                self._context.open()
            self._taken = -priming(self.fmt, self.rate)
        taken, at = [], 0
        while at < len(data):
            duration, size = PACKET.unpack_from(data, at)
            at += PACKET.size
            taken.append((data[at : at + size], duration))
            at += size
        if self._held is not None and taken:
            self._put(self._held[0], self._context.frame_size)
            self._held = None
        for packet, duration in taken[:-1]:
            self._put(packet, duration)
        if taken:
            self._held = taken[-1]
        return self._out()

    def _put(self, data: bytes, duration: int) -> None:
        assert self._taken is not None
        if self._container is None:
            self._packets.append((data, duration))
        else:
            packet = av.Packet(data)
            packet.pts = packet.dts = self._taken
            packet.duration, packet.time_base = duration, Fraction(1, self.rate)
            packet.stream = self._codec
            self._container.mux(packet)
        self._taken += duration
        self.frames = self._taken  # the timeline starts at -priming: this is the audio's

    @property
    def _context(self) -> Any:
        return self._codec if self._container is None else self._codec.codec_context

    def finish(self) -> bytes:
        """Flush the encoder and close the container; the remaining bytes (a joined job's
        segment: its bare packets, each after its PACKET)."""
        if self._taken is not None:  # joined: nothing was encoded here
            if self._held is not None:
                self._put(*self._held)
            tail = b""
        else:
            tail = self.write(None)
        if self.packets:
            return b"".join(PACKET.pack(d, len(p)) + p for p, d in self._packets)
        if self._container is None:
            write_caf_opus(
                self.out,
                [packet for packet, _ in self._packets],
                rate=self.rate,
                frames_per_packet=self._codec.frame_size,
                valid_frames=self.frames,
                priming_frames=priming(self.fmt, self.rate),
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
        packets: bool = False,
    ) -> None:
        self.fmt, self.rate, self.streaming = fmt, rate, streaming
        self.pcm_bytes = 0
        self.frames = 0
        raw = fmt.container == "raw"
        settings = settings or EncodeSettings()
        self._av = (
            None if raw else _Av(fmt, rate, settings, streaming, follows=follows, packets=packets)
        )

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

    def join(self, packets: bytes) -> bytes:
        """Bytes ready after a joined job's next segment, encoded apart as bare packets (an
        Encoder's with `packets`, of this format and rate), put into this one's stream."""
        assert self._av is not None and self.fmt.joins == "packets"
        data = self._av.take(packets)
        self.frames = self._av.frames
        return data

    def finish(self) -> bytes:
        """The remaining bytes (all of them for formats that do not stream)."""
        if self._av is None:
            return b""
        data = self._av.finish()
        self.frames = self._av.frames  # a joined stream's last packet counted as it ends
        return data

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
    packets: bool = False,
) -> bytes:
    """`encode_whole` of the pieces joined, each encoded as it comes (they may still be in
    the making: a segment being spoken); `follows`: the bytes go after another stream's;
    `packets`: bare packets, to be joined into another stream (`Encoder.join`)."""
    encoder = Encoder(fmt, rate, streaming, settings, follows=follows, packets=packets)
    try:
        body = [encoder.start(), *(encoder.feed(piece) for piece in pieces), encoder.finish()]
    except BaseException:
        encoder.abort()
        raise
    return encoder.header() + b"".join(body)
