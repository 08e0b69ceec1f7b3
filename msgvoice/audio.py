"""Audio: normalise engine output, fade and join segments, trim silence, resample, encode."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from msgvoice.samples import Samples, to_float32

FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
"""Output format → (libsndfile container, codec)."""

OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
MP3_MAX_RATE = 48_000


class AudioError(ValueError):
    """Audio that cannot be written or read."""


def trim_silence(samples: Samples, rate: int, silence_db: float, keep_ms: float = 30.0) -> Samples:
    """Drop leading and trailing audio quieter than `silence_db`, keeping a short margin."""
    threshold = 10 ** (silence_db / 20)
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if loud.size == 0:
        return samples[:0]
    keep = int(rate * keep_ms / 1000)
    return samples[max(0, loud[0] - keep) : loud[-1] + 1 + keep]


def fade_edges(samples: Samples, rate: int, fade_ms: float) -> Samples:
    """Raised-cosine fade in and out over `fade_ms` so a join cannot click."""
    n = min(int(rate * fade_ms / 1000), len(samples) // 2)
    if n <= 0:
        return samples
    out = samples.copy()
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n, dtype=np.float32))).astype(np.float32)
    out[:n] *= ramp
    out[-n:] *= ramp[::-1]
    return out


def resample(samples: Samples, rate_in: int, rate_out: int) -> Samples:
    """Resample with soxr (high quality)."""
    if rate_in == rate_out or samples.size == 0:
        return samples
    return np.asarray(soxr.resample(samples, rate_in, rate_out), dtype=np.float32)


def output_rate(fmt: str, engine_rate: int, opus_rate_hz: int) -> int:
    """The sample rate a format is written at."""
    if fmt == "ogg":
        return opus_rate_hz
    if fmt == "mp3" and engine_rate > MP3_MAX_RATE:
        return MP3_MAX_RATE
    return engine_rate


@dataclass(frozen=True)
class Shaping:
    """How segments are cleaned and joined."""

    fade_ms: float = 8.0
    gap_ms: float = 180.0
    silence_db: float = -50.0


def shape_segment(samples: Any, rate: int, shaping: Shaping) -> Samples:
    """One segment as it goes into the joined output: normalised, trimmed, faded."""
    clean = trim_silence(to_float32(samples), rate, shaping.silence_db)
    return fade_edges(clean, rate, shaping.fade_ms)


def gap(rate: int, shaping: Shaping) -> Samples:
    """The silence placed between two segments."""
    return np.zeros(int(rate * shaping.gap_ms / 1000), dtype=np.float32)


def max_jump(samples: Samples) -> float:
    """Largest absolute difference between neighbouring samples (a click shows as a jump)."""
    return float(np.max(np.abs(np.diff(samples)))) if samples.size > 1 else 0.0


def click_ratio(
    samples: Samples, rate: int, min_gap_ms: float = 60.0, window_ms: float = 5.0
) -> float:
    """Largest sample jump within `window_ms` of a silent gap's edges (where segments are
    joined) over the largest jump elsewhere: at most 1 means the joins are no sharper than the
    speech itself. 0 when there are no joins."""
    silent = np.abs(samples) < 1e-4
    padded = np.concatenate([[False], silent, [False]]).astype(np.int8)
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1)
    long = (ends - starts) >= rate * min_gap_ms / 1000
    inner = (starts > 0) & (ends < len(samples))
    edges = np.concatenate([starts[long & inner], ends[long & inner]])
    jumps = np.abs(np.diff(samples))
    if edges.size == 0 or jumps.size == 0:
        return 0.0
    near = np.zeros(jumps.size, dtype=bool)
    reach = int(rate * window_ms / 1000)
    for edge in edges:
        near[max(0, edge - reach) : edge + reach] = True
    elsewhere = float(jumps[~near].max()) if (~near).any() else 0.0
    return float(jumps[near].max()) / elsewhere if elsewhere else 0.0


class AudioWriter:
    """Write an audio file piece by piece, atomically: the file appears only when complete.

    Blocks go straight to the encoder, so encoding of one segment can overlap synthesis of the
    next. On error or `abort()` the temporary file is removed and nothing is left behind.
    """

    def __init__(self, path: Path, fmt: str, rate: int) -> None:
        if fmt not in FORMATS:
            raise AudioError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        self.path, self.fmt, self.rate = Path(path), fmt, rate
        self.frames = 0
        container, codec = FORMATS[fmt]
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


def read_raw(path: Path) -> Samples:
    """Read a worker's raw little-endian float32 output file."""
    return np.fromfile(path, dtype="<f4").astype(np.float32, copy=False)


def convert(src: Path, fmt: str, rate: int) -> Path:
    """`src` re-encoded as `fmt` at `rate` beside it (made once; reused afterwards)."""
    target = src.with_name(f"{src.stem}.{rate // 1000}k.{fmt}")
    if not target.exists():
        data, src_rate = sf.read(str(src), dtype="float32", always_2d=False)
        with AudioWriter(target, fmt, rate) as writer:
            writer.write(resample(to_float32(data), src_rate, rate))
            writer.commit()
    return target
