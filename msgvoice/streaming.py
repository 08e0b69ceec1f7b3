"""Encoding audio as it is produced, for responses that start before the audio is complete.

PCM and WAV are written here (a streamed WAV carries unknown sizes, 0xFFFFFFFF, as is usual);
OGG/Opus goes through libsndfile into a growing byte buffer, which needs no seeking; MP3 and
FLAC need their whole file, so they are returned at the end.
"""

from __future__ import annotations

import contextlib
import struct
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

from msgvoice import audio
from msgvoice.samples import Samples


def to_int16(samples: Samples) -> bytes:
    """Little-endian 16-bit PCM (rounded, clipped at full scale)."""
    return np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2").tobytes()


def wav_header(rate: int, data_bytes: int | None) -> bytes:
    """A 16-bit mono RIFF/WAVE header; unknown sizes (streaming) are 0xFFFFFFFF."""
    data = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data)
    )


class _Sink:
    """A write-only stream for libsndfile's OGG writer: bytes are collected as pages appear."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.position = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.position + offset
        if target != self.position:
            raise OSError("the OGG stream cannot seek")
        return self.position

    def read(self, _size: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        out, self.buffer = bytes(self.buffer), bytearray()
        return out


class Encoder:
    """Turns pieces (float32 at `rate`) into the bytes of one response format, as they come."""

    def __init__(self, fmt: str, rate: int, streaming: bool, scratch: Path) -> None:
        self.fmt, self.rate, self.streaming = fmt, rate, streaming
        self.pcm_bytes = 0
        self.pieces = 0
        self._sink: _Sink | None = None
        self._file: sf.SoundFile | None = None
        self._whole: audio.AudioWriter | None = None
        if fmt == "opus":
            self._sink = _Sink()
            self._file = sf.SoundFile(
                self._sink, "w", samplerate=rate, channels=1, format="OGG", subtype="OPUS"
            )
        elif fmt in ("mp3", "flac"):
            self._whole = audio.AudioWriter(scratch / f"{uuid.uuid4().hex}.{fmt}", fmt, rate)

    def start(self) -> bytes:
        """Bytes before the first piece (a streamed WAV's header)."""
        return wav_header(self.rate, None) if self.fmt == "wav" and self.streaming else b""

    def feed(self, piece: Samples) -> bytes:
        """Bytes ready after one more piece."""
        self.pieces += 1
        if self._file is not None and self._sink is not None:
            self._file.write(piece)
            return self._sink.take()
        if self._whole is not None:
            self._whole.write(piece)
            return b""
        data = to_int16(piece)
        self.pcm_bytes += len(data)
        return data

    def finish(self) -> bytes:
        """The remaining bytes (all of them for mp3 and flac)."""
        if self._file is not None and self._sink is not None:
            self._file.close()
            return self._sink.take()
        if self._whole is not None:
            path = self._whole.commit()
            try:
                return path.read_bytes()
            finally:
                path.unlink(missing_ok=True)
        return b""

    def abort(self) -> None:
        """Drop anything half made."""
        if self._whole is not None:
            self._whole.abort()
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
