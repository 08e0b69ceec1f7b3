"""Encoding: audio files written atomically, bytes for responses that stream, conversions.

`AudioWriter` writes a file piece by piece (it appears only when complete). `Encoder` turns
pieces into a response's bytes as they come: PCM and WAV here (a streamed WAV carries unknown
sizes, 0xFFFFFFFF, as is usual), OGG/Opus through libsndfile into a growing buffer; MP3 and FLAC
need their whole file, so they come at the end. `convert` and `to_caf` make a chat app's format
from a finished voice note.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile as sf

from msgvoice.speech.audio import resample
from msgvoice.speech.formats import FILE_FORMATS, Format
from msgvoice.worker.protocol import Samples, to_float32

CAF_RATE = 24_000
FFMPEG_TIMEOUT_S = 60


class AudioError(ValueError):
    """Audio that cannot be written or read."""


class AudioWriter:
    """Write an audio file piece by piece, atomically: the file appears only when complete.

    Blocks go straight to the encoder, so encoding of one segment can overlap synthesis of the
    next. On error or `abort()` the temporary file is removed and nothing is left behind.
    """

    def __init__(self, path: Path, fmt: str, rate: int) -> None:
        if fmt not in FILE_FORMATS:
            raise AudioError(f"unknown format {fmt!r}; use one of {', '.join(FILE_FORMATS)}")
        self.path, self.fmt, self.rate = Path(path), fmt, rate
        self.frames = 0
        container, codec = FILE_FORMATS[fmt].container, FILE_FORMATS[fmt].codec
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent
        )
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._file = sf.SoundFile(
                tmp, "w", samplerate=rate, channels=1, format=container, subtype=codec
            )
        except Exception as exc:
            self._tmp.unlink(missing_ok=True)
            raise AudioError(f"cannot encode {fmt} at {rate} Hz: {exc}") from exc

    def write(self, samples: Samples) -> None:
        """Append mono float32 samples at the writer's rate."""
        if samples.size:
            self._file.write(samples)
            self.frames += samples.size

    def start(self) -> bytes:
        """Nothing to send before the first piece (a file is not streamed)."""
        return b""

    def feed(self, samples: Samples) -> bytes:
        """`write`, in the shape the speaker's encode loop drives (no bytes come back)."""
        self.write(samples)
        return b""

    def commit(self) -> Path:
        """Finish the file and move it into place."""
        self._file.close()
        os.chmod(self._tmp, 0o644)  # mkstemp made it private
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        with contextlib.suppress(Exception):
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> AudioWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()

    @property
    def duration_s(self) -> float:
        """Seconds written so far."""
        return self.frames / self.rate


def convert(src: Path, fmt: str, rate: int) -> Path:
    """`src` re-encoded as `fmt` at `rate` beside it (made once; reused afterwards)."""
    target = src.with_name(f"{src.stem}.{rate // 1000}k.{fmt}")
    if not target.exists():
        data, src_rate = sf.read(str(src), dtype="float32", always_2d=False)
        with AudioWriter(target, fmt, rate) as writer:
            writer.write(resample(to_float32(data), src_rate, rate))
            writer.commit()
    return target


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

    def __init__(self, fmt: Format, rate: int, streaming: bool, scratch: Path) -> None:
        self.fmt, self.rate, self.streaming = fmt, rate, streaming
        self.pcm_bytes = 0
        self.pieces = 0
        self._sink: _Sink | None = None
        self._file: sf.SoundFile | None = None
        self._whole: AudioWriter | None = None
        if fmt.name == "ogg":
            self._sink = _Sink()
            self._file = sf.SoundFile(
                self._sink, "w", samplerate=rate, channels=1, format="OGG", subtype="OPUS"
            )
        elif not fmt.streams:
            self._whole = AudioWriter(scratch / f"{uuid.uuid4().hex}.{fmt.suffix}", fmt.name, rate)

    def start(self) -> bytes:
        """Bytes before the first piece (a streamed WAV's header)."""
        return wav_header(self.rate, None) if self.fmt.name == "wav" and self.streaming else b""

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

    def header(self) -> bytes:
        """What goes before everything else once the whole size is known (a WAV's header)."""
        if self.fmt.name == "wav" and not self.streaming:
            return wav_header(self.rate, self.pcm_bytes)
        return b""

    def abort(self) -> None:
        """Drop anything half made."""
        if self._whole is not None:
            self._whole.abort()
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()


def is_format(path: Path, fmt: str, rate: int) -> bool:
    """Whether a file already is `fmt` at `rate` (so it can be sent as it is)."""
    info = sf.info(str(path))
    spec = FILE_FORMATS[fmt]
    return (info.format, info.subtype, info.samplerate) == (spec.container, spec.codec, rate)


def caf_encoder() -> str | None:
    """ffmpeg's path if it can write Opus (for CAF voice notes), else None."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    try:
        listing = subprocess.run(
            [ffmpeg, "-hide_banner", "-encoders"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return ffmpeg if "libopus" in listing else None


def to_caf(src: Path, ffmpeg: str) -> Path:
    """The voice note as Opus 24 kHz mono in CAF (made once, beside it)."""
    target = src.with_name(f"{src.stem}.caf")
    if target.exists():
        return target
    partial = target.with_name(f".{target.name}.part.caf")
    command = [ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-i", str(src), "-ac", "1"]
    command += ["-ar", str(CAF_RATE), "-c:a", "libopus", "-b:a", "32k", str(partial)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess(command, -1, "", "timed out")
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise AudioError(f"ffmpeg could not make CAF: {done.stderr.strip()[:200]}")
    partial.replace(target)
    return target
