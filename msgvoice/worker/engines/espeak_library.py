"""libespeak-ng 1.52 from the espeakng-loader wheel, bound through ctypes: one library per
process, initialised once, spoken into one utterance at a time.

The library keeps parameters between calls (they are sticky), so every utterance sets all of
them; it is not re-entrant; and the C callback object is kept referenced for the life of the
process, or the library would call freed memory.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache
from typing import Any

import espeakng_loader
import numpy as np
import numpy.typing as npt

from msgvoice.worker.protocol import EngineUnavailable, Prosody

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAMS = {
    "rate": 1,
    "volume": 2,
    "pitch": 3,
    "range": 4,
    "punctuation": 5,
    "capitals": 6,
    "wordgap": 7,
}
_NEUTRAL = {"rate": 175, "volume": 100, "pitch": 50, "range": 50}
_LIMITS = {"rate": (80, 450), "volume": (0, 200), "pitch": (0, 100), "range": (0, 100)}

SAMPLE = "你好，今天天气真好。Hello, it is 9:30."
"""Spoken once by the pristine process at start, and by a probe child to learn which pages an
utterance writes: Chinese, English and digits, so the tables they need are loaded before the
first fork rather than in every child."""

_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def espeak_parameters(prosody: Prosody) -> dict[str, int]:
    """eSpeak's absolute parameter values for a prosody (1.0 everywhere = eSpeak's defaults)."""
    scaled = {
        "rate": _NEUTRAL["rate"] * prosody.rate,
        "volume": _NEUTRAL["volume"] * prosody.volume,
        "pitch": _NEUTRAL["pitch"] * prosody.pitch,
        "range": _NEUTRAL["range"] * prosody.range,
    }
    out = {k: round(min(max(v, _LIMITS[k][0]), _LIMITS[k][1])) for k, v in scaled.items()}
    return out | {"punctuation": 0, "capitals": 0, "wordgap": 0}


Piece = npt.NDArray[np.int16]
_HEARD: list[Callable[[Piece], bool]] = []
"""Who takes each piece the library speaks during one utterance (one library per process); it
answers True to stop the utterance."""


def _collect(wav: Any, count: int, _events: Any) -> int:
    if wav and count > 0 and _HEARD:
        return int(_HEARD[0](np.ctypeslib.as_array(wav, shape=(count,))))
    return 0


_CALLBACK = _Callback(_collect)  # referenced for the process's life: the library holds it


@cache
def library() -> tuple[Any, int]:
    """libespeak-ng, initialised once per process, and its sample rate. Its state is global
    (voice, parameters, the synth callback): a second espeak_Initialize, or a callback freed
    with an engine while another still speaks, crashed the process.

    The pristine state every child starts from is the state after one fixed utterance, once
    per process: as reproducible as a library that never spoke, and warm (a 2-character child
    took 3.2 ms from a cold parent, 1.9 from a warm one)."""
    try:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
    except OSError as exc:
        raise EngineUnavailable(f"libespeak-ng cannot be loaded: {exc}") from exc
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    data = espeakng_loader.get_data_path().encode()
    rate = int(lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0))
    if rate <= 0:
        raise EngineUnavailable(f"espeak_Initialize failed with {rate}")
    lib.espeak_SetSynthCallback(_CALLBACK)
    if lib.espeak_SetVoiceByName(b"cmn") != 0:
        raise EngineUnavailable("eSpeak's data has no cmn voice")
    utter(lib, SAMPLE, espeak_parameters(Prosody()), None)
    return lib, rate


@cache
def _libc() -> Any:
    return ctypes.CDLL(None)


def utter(
    lib: Any,
    text: str,
    parameters: dict[str, int],
    seed: int | None,
    each: Callable[[Piece], bool] | None = None,
) -> Piece:
    """One utterance in the voice loaded, with every parameter and random stream set (they are
    sticky; eSpeak also draws on libc's rand()). With `each`, every piece (a view of the
    library's buffer, 60 ms of audio) goes to it as it is spoken, and nothing is returned."""
    _libc().srand(0 if seed is None else seed & 0x7FFFFFFF)
    lib.espeak_ng_SetRandSeed(ctypes.c_long(0 if seed is None else seed))
    for name, value in parameters.items():
        lib.espeak_SetParameter(_PARAMS[name], value, 0)
    pieces: list[Piece] = []

    def keep(piece: Piece) -> bool:
        pieces.append(piece.copy())
        return False

    _HEARD[:] = [each or keep]
    try:
        data = text.encode("utf-8")
        status = lib.espeak_Synth(
            data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        lib.espeak_Synchronize()
    finally:
        _HEARD.clear()
    if status != 0:
        raise RuntimeError(f"espeak_Synth failed with status {status}")
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
