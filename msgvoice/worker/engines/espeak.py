"""eSpeak NG 1.52 from the espeakng-loader wheel, driven through ctypes.

The library keeps parameters between calls (they are sticky), so every call sets all of them;
it is not re-entrant, so calls are serialised; and the C callback object is kept referenced for
the life of the engine, or the library would call freed memory.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

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


_SPOKEN: list[npt.NDArray[np.int16]] = []
"""What the library's callback collects during one utterance (one library per process)."""


def _collect(wav: Any, count: int, _events: Any) -> int:
    if wav and count > 0:
        _SPOKEN.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
    return 0


_CALLBACK = _Callback(_collect)  # referenced for the process's life: the library holds it


@cache
def _library() -> tuple[Any, int]:
    """libespeak-ng, initialised once per process, and its sample rate. Its state is global
    (voice, parameters, the synth callback): a second espeak_Initialize, or a callback freed
    with an engine while another still speaks, crashed the process."""
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
    return lib, rate


@dataclass(frozen=True)
class _Child:
    """A forked, pristine copy of the engine waiting for one request."""

    pid: int
    request_fd: int
    answer_fd: int


class EspeakEngine:
    """The default engine: instant, robotic, Mandarin, English and mixed text."""

    name = "espeak"

    def __init__(self, voice: str = "cmn") -> None:
        self.default_voice = voice
        self._lock = threading.Lock()
        self._ready: _Child | None = None
        self._spent: list[int] = []  # children that answered, reaped off the clock
        self._lib, self.sample_rate = _library()
        self._libc = ctypes.CDLL(None)  # eSpeak also draws on libc's rand()
        self._voice: str | None = None
        self._set_voice(voice)

    def _set_voice(self, voice: str) -> None:
        """Load a voice, unless it is the library's already: loading it again changes nothing
        but, in a forked child, copies ~1.8 MB of the library's tables page by page (1.2 ms of
        a 2-character job)."""
        if voice == self._voice:
            return
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak has no voice {voice!r}")
        self._voice = voice

    def synthesize(
        self,
        text: str,
        voice: str | None,
        prosody: Prosody,
        emotion: Sequence[float] | None,
        seed: int | None = None,
    ) -> tuple[npt.NDArray[np.int16], int]:
        """Speak text; `emotion` is ignored here (the daemon maps it to `prosody`).

        eSpeak keeps state between utterances (pitch flutter, random streams), so the same
        call twice would differ by a few samples. Each call therefore runs in a forked child
        of this pristine process (which never speaks itself): every utterance starts from the
        same state, and output is byte-identical for the same text, voice, prosody and seed.
        The child is forked ahead of time (`prepare`) and reaped after the answer, so neither
        the fork nor the child's exit is on the call's path.
        """
        del emotion
        with self._lock:
            if not hasattr(os, "fork"):
                return self._speak(text, voice, prosody, seed), self.sample_rate
            child, self._ready = self._ready or self._fork(), None
            request = {"text": text, "voice": voice, "prosody": prosody.as_json(), "seed": seed}
            with os.fdopen(child.request_fd, "wb") as pipe:
                pipe.write(json.dumps(request).encode())
            with os.fdopen(child.answer_fd, "rb") as pipe:
                data = pipe.read()
            self._spent.append(child.pid)
            whole = data[:1] == b"A" and int.from_bytes(data[1:9], "little") == len(data) - 9
            status = 0 if whole or data[:1] == b"E" else self._reap()
        if data[:1] == b"E":
            raise ValueError(data[1:].decode(errors="replace"))
        if not whole:
            raise RuntimeError(f"eSpeak synthesis failed (child status {status})")
        return np.frombuffer(data[9:], dtype=np.int16).copy(), self.sample_rate

    def prepare(self) -> None:
        """Fork the next pristine child now, while the worker is idle."""
        with self._lock:
            if self._ready is None and hasattr(os, "fork"):
                self._ready = self._fork()

    def _reap(self) -> int:
        """Wait for the children that answered (they are leaving); the last one's status."""
        status = 0
        while self._spent:
            _, status = os.waitpid(self._spent.pop(), 0)
        return status

    def _fork(self) -> _Child:
        self._reap()
        request_r, request_w = os.pipe()
        answer_r, answer_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: wait for one request, answer it, leave at once
            os.close(request_w)
            os.close(answer_r)
            self._child(request_r, answer_w)
        os.close(request_r)
        os.close(answer_w)
        return _Child(pid, request_w, answer_r)

    def _child(self, request_fd: int, answer_fd: int) -> NoReturn:
        """In the forked child: read the request (EOF without one: the worker is gone), then
        b"A" + the samples' byte count (8 bytes, little-endian) + samples, or b"E" + the
        error. The count shows the answer whole without waiting for the child's exit."""
        code = 1
        try:
            with os.fdopen(request_fd, "rb") as pipe:
                raw = pipe.read()
            if raw:
                request = json.loads(raw)
                try:
                    speech = self._speak(
                        request["text"],
                        request["voice"],
                        Prosody(**request["prosody"]),
                        request["seed"],
                    )
                    samples = speech.tobytes()
                    reply = b"A" + len(samples).to_bytes(8, "little") + samples
                except (ValueError, RuntimeError) as exc:
                    reply = b"E" + str(exc).encode()
                with os.fdopen(answer_fd, "wb") as pipe:
                    pipe.write(reply)
            code = 0
        finally:
            os._exit(code)

    def _speak(
        self, text: str, voice: str | None, prosody: Prosody, seed: int | None
    ) -> npt.NDArray[np.int16]:
        """One utterance with every parameter set (they are sticky)."""
        self._libc.srand(0 if seed is None else seed & 0x7FFFFFFF)
        self._lib.espeak_ng_SetRandSeed(ctypes.c_long(0 if seed is None else seed))
        self._set_voice(voice or self.default_voice)
        for name, value in espeak_parameters(prosody).items():
            self._lib.espeak_SetParameter(_PARAMS[name], value, 0)
        _SPOKEN.clear()
        data = text.encode("utf-8")
        status = self._lib.espeak_Synth(
            data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        self._lib.espeak_Synchronize()
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        chunks = list(_SPOKEN)
        _SPOKEN.clear()
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def facts(self) -> dict[str, Any]:
        """Voices, library path, sample rate and default voice."""
        lang = Path(espeakng_loader.get_data_path()) / "lang"
        files = {p.name: p for p in lang.rglob("*") if p.is_file()}
        return {
            "voices": sorted(files),
            "languages": {name: _languages(path) for name, path in files.items()},
            "library": espeakng_loader.get_library_path(),
            "sample_rate": self.sample_rate,
            "voice": self.default_voice,
            "version": "1.52",
        }


def _languages(voice_file: Path) -> list[str]:
    """The languages an eSpeak voice file says it speaks (its `language <code>` lines)."""
    words = [line.split() for line in voice_file.read_text("utf-8", errors="replace").splitlines()]
    return [w[1] for w in words if len(w) > 1 and w[0] == "language"]
