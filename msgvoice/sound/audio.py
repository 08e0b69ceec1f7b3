"""Audio signal work (numpy + soxr): trim silence, fade and join segments, resample, measure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr

from msgvoice.worker.samples import Samples, to_float32


def trim_silence(samples: Samples, rate: int, silence_db: float, keep_ms: float = 30.0) -> Samples:
    """Drop leading and trailing audio quieter than `silence_db`, keeping a short margin."""
    loud = _loud(samples, silence_db)
    if loud is None:
        return samples[:0]
    keep = int(rate * keep_ms / 1000)
    return samples[max(0, loud[0] - keep) : loud[1] + 1 + keep]


_SCAN = 4096
"""Samples looked at together when finding where a segment's sound begins and ends."""


def _loud(samples: Samples, silence_db: float) -> tuple[int, int] | None:
    """The first and last of the samples louder than `silence_db` (None: none is), looked for
    a block at a time from either end: speech begins and ends near a segment's edges, so
    little of it is read, and nothing as large as it is made (every loud sample's index,
    8 bytes each, was 6 MB at the soak's peak)."""
    threshold = 10 ** (silence_db / 20)
    for start in range(0, samples.size, _SCAN):
        block = np.abs(samples[start : start + _SCAN]) > threshold
        if block.any():
            first = start + int(block.argmax())
            break
    else:
        return None
    for end in range(samples.size, first, -_SCAN):  # the last block holds `first`: it ends
        start = max(first, end - _SCAN)
        block = np.abs(samples[start:end]) > threshold
        if block.any():
            return first, end - 1 - int(block[::-1].argmax())
    raise AssertionError("unreachable: the sample at `first` is loud")


def fade_edges(samples: Samples, rate: int, fade_ms: float, mine: bool = False) -> Samples:
    """Raised-cosine fade in and out over `fade_ms` so a join cannot click; `mine`: the
    samples are nobody else's, so they are faded where they are rather than in a copy."""
    n = min(int(rate * fade_ms / 1000), len(samples) // 2)
    if n <= 0:
        return samples
    out = samples if mine else samples.copy()
    ramp = _ramp(n)
    out[:n] *= ramp
    out[-n:] *= ramp[::-1]
    return out


def resample(samples: Samples, rate_in: int, rate_out: int) -> Samples:
    """Resample with soxr (high quality)."""
    if rate_in == rate_out or samples.size == 0:
        return samples
    return np.asarray(soxr.resample(samples, rate_in, rate_out), dtype=np.float32)


@dataclass(frozen=True)
class Shaping:
    """How segments are cleaned and joined."""

    fade_ms: float = 8.0
    gap_ms: float = 180.0
    silence_db: float = -50.0


def shape_segment(samples: Any, rate: int, shaping: Shaping) -> Samples:
    """One segment as it goes into the joined output: normalised, trimmed, faded (in the
    float32 copy normalising made, if it made one: integer PCM's)."""
    audio = to_float32(samples)
    made = audio is not samples and not np.may_share_memory(audio, samples)
    clean = trim_silence(audio, rate, shaping.silence_db)
    return fade_edges(clean, rate, shaping.fade_ms, mine=made and clean.flags.writeable)


def piece(samples: Any, rate: int, out_rate: int, shaping: Shaping, factor: float) -> Samples:
    """One spoken segment as it goes into the joined output at `out_rate`: trimmed, faded,
    made `factor` times as long (pitch kept), resampled."""
    shaped = stretch(shape_segment(samples, rate, shaping), rate, factor)
    return resample(shaped, rate, out_rate)


_NONE = np.zeros(0, dtype=np.float32)


class Shaper:
    """`shape_segment` a piece at a time, as a segment is spoken: what it gives, joined, is
    exactly `shape_segment` of the whole. Audio is held back only as far as the segment's end
    could still change it: a quiet stretch that may turn out to be the tail, and the fade."""

    def __init__(self, rate: int, shaping: Shaping, keep_ms: float = 30.0) -> None:
        self.rate, self.fade_ms, self.silence_db = rate, shaping.fade_ms, shaping.silence_db
        self.keep, self.fade = int(rate * keep_ms / 1000), int(rate * shaping.fade_ms / 1000)
        self.held, self.at = _NONE, 0  # what is not given yet, and where it starts
        self.start: int | None = None  # where the segment starts (keep before the first loud)
        self.end = 0  # where it ends as far as heard (keep after the last loud sample)
        self.given = 0

    def feed(self, samples: Samples) -> Samples:
        """What of the segment is settled now that `samples` (float32) came."""
        heard = self.at + self.held.size
        loud = _loud(samples, self.silence_db)
        if loud is not None:
            if self.start is None:
                self.start = max(0, heard + loud[0] - self.keep)
            self.end = heard + loud[1] + 1 + self.keep
        self.held = np.concatenate([self.held, samples]) if self.held.size else samples
        if self.start is None:  # nothing loud yet: only the last `keep` samples may be kept
            self._drop(self.at + self.held.size - self.keep)
            return _NONE
        self._drop(self.start)
        end = min(self.end, heard + samples.size)
        if end - self.start < 2 * self.fade:  # the fade may still be shortened
            return _NONE
        out = self.held[: end - self.fade - self.at].copy()
        self._drop(end - self.fade)
        if self.given < self.fade:
            ramp = _ramp(self.fade)[self.given :]
            out[: ramp.size] *= ramp[: out.size]
        self.given += out.size
        return out

    def finish(self) -> Samples:
        """The rest of the segment, its fade-out included."""
        if self.start is None:
            return _NONE
        rest = self.held[: min(self.end, self.at + self.held.size) - self.at]
        if not self.given:
            return fade_edges(rest, self.rate, self.fade_ms)
        out = rest.copy()
        if self.fade:
            out[-self.fade :] *= _ramp(self.fade)[::-1]
        return out

    def _drop(self, upto: int) -> None:
        if upto > self.at:
            self.held, self.at = self.held[upto - self.at :], upto


def _ramp(n: int) -> Samples:
    """`fade_edges`' raised-cosine ramp of n samples."""
    return (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n, dtype=np.float32))).astype(np.float32)


class Pieces:
    """`piece` a piece at a time: each spoken piece (float32) is shaped and resampled as it
    comes, so a segment can be encoded while it is still being spoken (the joined output is
    exactly `piece`'s; `piece` keeps to one copy of a whole segment at a time). A segment to stretch
    is held whole (the stretch needs all of it) and given at the end."""

    def __init__(self, rate: int, out_rate: int, shaping: Shaping, factor: float) -> None:
        self.rate, self.factor = rate, factor
        self.shaper = Shaper(rate, shaping)
        self.whole: list[Samples] | None = [] if abs(factor - 1.0) >= 1e-6 else None
        self.resampler = (
            soxr.ResampleStream(rate, out_rate, 1, dtype="float32") if rate != out_rate else None
        )

    def feed(self, samples: Samples) -> Samples:
        """The output settled by one more spoken piece."""
        shaped = self.shaper.feed(samples)
        if self.whole is not None:
            self.whole.append(shaped)
            return _NONE
        return self._resample(shaped, last=False)

    def finish(self) -> Samples:
        """The rest of the output."""
        shaped = self.shaper.finish()
        if self.whole is not None:
            shaped = stretch(np.concatenate([*self.whole, shaped]), self.rate, self.factor)
        return self._resample(shaped, last=True)

    def _resample(self, samples: Samples, last: bool) -> Samples:
        if self.resampler is None:
            return samples
        return np.asarray(self.resampler.resample_chunk(samples, last=last), dtype=np.float32)


def gap(rate: int, shaping: Shaping, stretch: float = 1.0) -> Samples:
    """The silence placed between two segments (`stretch` times as long)."""
    return np.zeros(int(rate * shaping.gap_ms / 1000 * stretch), dtype=np.float32)


WSOLA_WINDOW_S, WSOLA_TOLERANCE_S = 0.040, 0.010


def stretch(samples: Samples, rate: int, factor: float) -> Samples:
    """`samples` made `factor` times as long with the pitch kept: WSOLA (waveform-similarity
    overlap-add; Verhelst and Roelands, 1993). Frames of 40 ms go out every 20 ms under a
    periodic Hann window; each is taken from near its nominal place in the input (±10 ms)
    where it best continues the frame before it, so pitch periods line up and nothing is
    resampled. Chosen over a phase vocoder (no phasiness on speech) and over a library
    (those at hand bring scipy to the daemon or are unmaintained); the output has exactly
    round(len × factor) samples."""
    out_len = round(samples.size * factor)
    if abs(factor - 1.0) < 1e-6 or samples.size == 0:
        return samples
    win = 2 * round(rate * WSOLA_WINDOW_S / 2)
    hop, tol = win // 2, round(rate * WSOLA_TOLERANCE_S)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)).astype(np.float32)
    hops = out_len // hop + 2
    right = win + 2 * tol + hop + int(hop / factor) + 1
    x = np.pad(samples.astype(np.float32), (tol, right))
    y = np.zeros(hops * hop + win, dtype=np.float32)
    weight = np.zeros_like(y)
    previous = tol
    for k in range(hops):
        nominal = tol + min(round(k * hop / factor), samples.size)
        position = nominal
        if k:
            follows = x[previous + hop : previous + hop + win]  # the previous frame, continued
            lo = nominal - tol
            scores = np.correlate(x[lo : nominal + tol + win], follows, "valid")
            position = lo + int(np.argmax(scores))
        y[k * hop : k * hop + win] += x[position : position + win] * window
        weight[k * hop : k * hop + win] += window
        previous = position
    return (y[:out_len] / np.maximum(weight[:out_len], 1e-3)).astype(np.float32)


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
