"""Sample arrays as the whole pipeline sees them: mono float32 in [-1, 1] (numpy only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]
INT16_SCALE = 32768.0
HOT_FLOAT_MAX = 4.0
"""Float peaks up to this are over-driven float audio; above it, PCM values in a float array."""


class SampleError(ValueError):
    """Engine output that cannot be used: NaN, inf, wrong shape or type."""


def to_float32(samples: Any) -> Samples:
    """Return mono float32 in [-1, 1] from whatever an engine hands back.

    Integer PCM is scaled by its type's range; a float array in int16 range (the torchaudio 2.10
    lesson) is rescaled, never clipped; NaN or inf is an error.
    """
    array = np.asarray(samples)
    if array.size == 0:
        return np.zeros(0, dtype=np.float32)
    if array.ndim == 2:
        channel_axis = 0 if array.shape[0] < array.shape[1] else 1
        array = array.mean(axis=channel_axis)
    elif array.ndim != 1:
        raise SampleError(f"expected mono or (samples, channels) audio, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        scale = max(abs(info.min), info.max)
        if array.dtype.kind == "i" and array.dtype.itemsize <= 2:  # a power of two: exact
            exact: Samples = np.multiply(array, np.float32(1 / scale), dtype=np.float32)
            return exact
        return (array.astype(np.float64) / scale).astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise SampleError(f"expected numeric samples, got {array.dtype}")
    high, low = float(array.max()), float(array.min())  # no temporary arrays: NaN propagates
    if not (math.isfinite(high) and math.isfinite(low)):
        raise SampleError("engine returned NaN or infinite samples")
    peak = max(high, -low)
    if peak > HOT_FLOAT_MAX:  # PCM values carried in a float array
        array = array / (INT16_SCALE if peak <= INT16_SCALE else peak)
    elif peak > 1.0:  # float audio a little too hot: scale down, never clip
        array = array / peak
    return array.astype(np.float32, copy=False)
