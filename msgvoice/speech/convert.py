"""Conversions for chat apps: read any voice note back, describe it, re-encode it in the
format and size an app plays as a voice bubble (Telegram: OGG/Opus 48 kHz and at most 1 MB;
iMessage: CAF/Opus 24 kHz; QQ: SILK v3 24 kHz in Tencent's flavour, at most a minute)."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pysilk

from msgvoice.sound.audio import resample
from msgvoice.sound.encoder import AudioError, EncodeSettings
from msgvoice.sound.files import AudioWriter
from msgvoice.speech.formats import FILE_FORMATS
from msgvoice.speech.job import transient
from msgvoice.worker.protocol import Samples, to_float32

__all__ = [
    "AudioError",
    "convert",
    "decode",
    "describe",
    "fit_voice_note",
    "levels",
    "silk_notes",
]


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Reading a voice note: what is not audio (an empty file included) is an AudioError; an
    OS error that may heal (out of files, disk trouble) stays itself, worth another try."""
    try:
        yield
    except OSError as exc:  # PyAV's errno errors are OSErrors too
        if transient(exc):
            raise
        raise AudioError(f"cannot read {path.name}: {exc}") from exc
    except (av.FFmpegError, IndexError) as exc:
        raise AudioError(f"cannot read {path.name}: {exc}") from exc


def decode(path: Path) -> tuple[Samples, int]:
    """Any audio file as mono float32 samples and its sample rate."""
    with _reading(path), av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate)
        mono = av.AudioResampler(format="flt", layout="mono", rate=rate)
        parts = [
            f.to_ndarray().reshape(-1)
            for frame in container.decode(stream)
            for f in mono.resample(frame)
        ]
        parts += [f.to_ndarray().reshape(-1) for f in mono.resample(None)]
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return to_float32(samples), rate


def describe(path: Path) -> tuple[str, str, int]:
    """(container, codec, sample rate) of an audio file, by FFmpeg's names; AudioError for
    a file that is not audio (an empty one included)."""
    with _reading(path), av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return container.format.name, stream.codec_context.name, int(stream.rate or 0)


def levels(path: Path, points: int) -> tuple[float, list[float]]:
    """A voice note's length in seconds and its loudness as `points` levels from 0 to 1 (the
    RMS of each stretch, the loudest 1): the waveform chat apps draw on a voice bubble."""
    samples, rate = decode(path)
    if not samples.size:
        return 0.0, [0.0] * points
    stretches = np.array_split(samples.astype(np.float64), points)
    rms = np.array([np.sqrt(np.mean(np.square(s))) if s.size else 0.0 for s in stretches])
    top = float(rms.max()) or 1.0
    return samples.size / rate, [float(v) for v in rms / top]


def convert(src: Path, fmt: str, rate: int, settings: EncodeSettings | None = None) -> Path:
    """`src` re-encoded as `fmt` at `rate` beside it (made once; reused afterwards)."""
    target = src.with_name(f"{src.stem}.{rate // 1000}k.{FILE_FORMATS[fmt].suffix}")
    if not target.exists():
        samples, src_rate = decode(src)
        _write(target, fmt, rate, settings, resample(samples, src_rate, rate))
    return target


def _write(
    target: Path, fmt: str, rate: int, settings: EncodeSettings | None, samples: Samples
) -> None:
    with AudioWriter(target, fmt, rate, settings) as writer:
        writer.feed(samples)
        writer.commit()


VOICE_FILL = 0.92
"""Aim a little under a size limit: containers and VBR overshoot by a few percent."""
MIN_VOICE_KBPS = 16


def fit_voice_note(
    src: Path, max_bytes: int, rate: int, settings: EncodeSettings | None = None
) -> list[Path]:
    """`src` as OGG/Opus voice notes of at most `max_bytes` each (made once, beside it): the
    file itself when it fits; else one note at a lower bit rate; and when even
    MIN_VOICE_KBPS would not fit, numbered parts cut at the quietest moment near each cut."""
    settings = settings or EncodeSettings()
    if src.stat().st_size <= max_bytes and describe(src) == ("ogg", "opus", rate):
        return [src]
    samples, src_rate = decode(src)
    samples = resample(samples, src_rate, rate)
    seconds = max(samples.size / rate, 0.1)
    fits_kbps = int(max_bytes * 8 * VOICE_FILL / seconds / 1000)
    kbps = min(settings.opus_bitrate_kbps, fits_kbps)
    parts = 1 if kbps >= MIN_VOICE_KBPS else math.ceil(MIN_VOICE_KBPS / max(fits_kbps, 1))
    pieces = split_quietly(samples, rate, parts)
    kbps = max(kbps, MIN_VOICE_KBPS)
    lower = EncodeSettings(settings.opus_complexity, kbps)
    out = []
    for n, piece in enumerate(pieces, 1):
        target = src.with_name(f"{src.stem}.voice{n}of{len(pieces)}.{rate // 1000}k.ogg")
        if not target.exists():
            _write(target, "ogg", rate, lower, piece)
        out.append(target)
    return out


QUIET_SEARCH_S = 5.0


def split_quietly(samples: Samples, rate: int, parts: int) -> list[Samples]:
    """Cut into `parts` parts of about equal length, each cut at the quietest 50 ms within
    QUIET_SEARCH_S before the ideal place (so a part is at most that much longer)."""
    step, window = samples.size // parts, int(rate * 0.05)
    cuts = [0]
    for k in range(1, parts):
        lo, hi = max(cuts[-1] + window, k * step - int(QUIET_SEARCH_S * rate)), k * step
        energy = np.convolve(np.abs(samples[lo:hi]), np.ones(window), "valid")
        cuts.append(lo + int(np.argmin(energy)) + window // 2 if energy.size else hi)
    return [samples[a:b] for a, b in zip(cuts, [*cuts[1:], samples.size], strict=True)]


SILK_RATE, SILK_BITRATE = 24_000, 24_000
"""QQ's own voice notes: SILK v3 at 24 kHz; 24 kbit/s is clear speech at ~3 KB a second."""


def silk_notes(src: Path, max_s: float) -> list[tuple[bytes, float]]:
    """`src` as SILK v3 voice notes (Tencent's header, `\\x02#!SILK_V3`) of at most `max_s`
    seconds each, cut at quiet moments, with each one's length in seconds."""
    samples, rate = decode(src)
    samples = resample(samples, rate, SILK_RATE)
    if not samples.size:
        raise AudioError(f"{src.name} holds no audio")
    parts = math.ceil(samples.size / SILK_RATE / max(max_s - QUIET_SEARCH_S, 1.0))
    pieces = split_quietly(samples, SILK_RATE, parts)
    out = []
    for piece in pieces:
        pcm = (np.clip(piece, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        silk = io.BytesIO()
        pysilk.encode(io.BytesIO(pcm), silk, SILK_RATE, SILK_BITRATE, tencent=True)
        out.append((silk.getvalue(), piece.size / SILK_RATE))
    return out
