"""eSpeak NG, the default engine: every utterance in a pristine forked child, so the same
request always says the same samples (the library itself is bound in `espeak_library.py`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import espeakng_loader
import numpy as np

from msgvoice.worker.engines import espeak_frames as frames
from msgvoice.worker.engines import prefault
from msgvoice.worker.engines.espeak_frames import Cut, Spoken
from msgvoice.worker.engines.espeak_library import (
    SAMPLE,
    Piece,
    espeak_parameters,
    library,
    utter,
)
from msgvoice.worker.protocol import Making, Prosody, Samples, Shape, to_float32


@dataclass(frozen=True)
class _Child:
    """A forked, pristine copy of the engine waiting for one request."""

    pid: int
    request_fd: int
    answer_fd: int
    shape: Shape | None
    """What it can make of what it speaks (`stream`'s `shape`): the engine made it before
    the fork (`prepare`), so the child imports and sets up nothing."""


class EspeakEngine:
    """The default engine: instant, robotic, Mandarin, English and mixed text."""

    name = "espeak"

    def __init__(self, voice: str = "cmn") -> None:
        self.default_voice = voice
        self._lock = threading.Lock()
        self._ready: _Child | None = None
        self._spent: list[int] = []  # children that answered, reaped off the clock
        self._lib, self.sample_rate = library()
        self._voice: str | None = None
        self._set_voice(voice)
        self._touched: prefault.Runs | None = None  # learned after the first utterance
        self._shape: Shape | None = None  # the last job's (`stream`), made ready for the next
        self._making: tuple[Shape, Making] | None = None  # made by it here, never fed here

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
    ) -> tuple[Piece, int]:
        """Speak text; `emotion` is ignored here (the daemon maps it to `prosody`).

        eSpeak keeps state between utterances (pitch flutter, random streams), so the same
        call twice would differ by a few samples. Each call therefore runs in a forked child
        of this pristine process (which spoke one fixed sample at start and never again):
        every utterance starts from the same state, and output is byte-identical for the same
        text, voice, prosody and seed. The child is forked ahead of time (`prepare`), makes
        the pages it will write its own while it waits, and is reaped after the answer, so
        neither the fork, nor those copies, nor the child's exit is on the call's path.
        """
        pieces, rate = self.stream(text, voice, prosody, emotion, seed)
        spoken = [np.asarray(piece, dtype=np.int16) for piece in pieces]
        return (np.concatenate(spoken) if spoken else np.zeros(0, dtype=np.int16)), rate

    def stream(
        self,
        text: str,
        voice: str | None,
        prosody: Prosody,
        emotion: Sequence[float] | None,
        seed: int | None = None,
        *,
        shape: Shape | None = None,
    ) -> tuple[Spoken, int]:
        """`synthesize` as the child speaks: its pieces (about half a second of audio each) as
        they come, so the worker can encode one while the child speaks the next. With `shape`
        (a job's output), the pieces come as that output takes them (float32, trimmed, faded,
        stretched, resampled), made by the child as it speaks, beside the worker's encode
        rather than before it; the iterator returns the count of samples spoken. The rate is
        eSpeak's either way."""
        del emotion
        shape = None if shape is None else shape.at(self.sample_rate)  # comparable as made
        return self._pieces(text, voice, prosody, seed, shape), self.sample_rate

    def _pieces(
        self,
        text: str,
        voice: str | None,
        prosody: Prosody,
        seed: int | None,
        shape: Shape | None,
    ) -> Spoken:
        """The pieces of one utterance. The lock is held only to take a child: a caller that
        stops reading part way (its encode failed) holds nothing, and its child is killed
        when the iteration is closed, so no later utterance or reap waits on it. A child
        forked before the engine was ready for this `shape` (the first job, another format or
        speed) speaks plainly, shaped here."""
        if not hasattr(os, "fork"):  # one process: the lock keeps the library to one caller
            with self._lock:
                spoken = self._speak(text, voice, prosody, seed)
            return (yield from self._shaped([spoken], shape))
        with self._lock:
            child, self._ready = self._ready or self._fork(), None
            self._spent.append(child.pid)
            self._shape = shape or self._shape
        there = shape is not None and shape == child.shape
        request = {"text": text, "voice": voice, "prosody": prosody.as_json(), "seed": seed}
        with os.fdopen(child.request_fd, "wb") as pipe:
            pipe.write(json.dumps(request | {"shaped": there}).encode())
        try:
            wait = frames.ANSWER_WAIT_S
            if there:
                return (yield from frames.heard(child.answer_fd, np.float32, wait))
            return (yield from self._shaped(frames.heard(child.answer_fd, np.int16, wait), shape))
        except Cut as cut:  # died, or stuck: then it is stopped here
            _kill(child.pid)
            with self._lock:
                status = self._reap()
            why = str(cut) or f"child status {status}"
            raise RuntimeError(f"eSpeak synthesis failed ({why})") from None
        except GeneratorExit:  # nobody listens any more: the rest of the sentence is moot
            _kill(child.pid)
            raise
        finally:
            os.close(child.answer_fd)

    def _shaped(self, spoken: Iterable[Piece | Samples], shape: Shape | None) -> Spoken:
        """`spoken` as it comes, shaped in this process when `shape` asks for it."""
        making = None if shape is None else shape(self.sample_rate)
        count = 0
        for piece in spoken:
            count += piece.size
            yield piece if making is None else making.feed(to_float32(piece))
        if making is not None:
            yield making.finish()
        return count

    def prepare(self) -> None:
        """Fork the next pristine child now, while the worker is idle. Once the engine has
        spoken, first make what the last job's `shape` makes (so the child can shape without
        importing or setting anything up), then learn which pages an utterance writes (a
        probe child speaking `SAMPLE`, shaped likewise): a worker that never speaks never pays
        for either, nor does its start."""
        with self._lock:
            if not hasattr(os, "fork") or self._ready is not None:
                return
            if self._shape is not None and self._made_for() != self._shape:
                self._making = (self._shape, self._shape(self.sample_rate))
            if self._touched is None and self._spent:  # a child has answered: it has spoken
                sample: dict[str, Any] = {
                    "text": SAMPLE, "voice": None, "prosody": {}, "seed": None,
                    "shaped": self._making is not None,
                }  # fmt: skip
                probe = json.dumps(sample).encode()
                with open(os.devnull, "wb") as nowhere:
                    self._touched = prefault.learn(lambda: self._reply(probe, nowhere))
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
        frames.widen(answer_w)
        pid = prefault.fork()
        if pid == 0:  # the child: wait for one request, answer it, leave at once
            os.close(request_w)
            os.close(answer_r)
            self._child(request_r, answer_w)
        os.close(request_r)
        os.close(answer_w)
        return _Child(pid, request_w, answer_r, self._made_for())

    def _made_for(self) -> Shape | None:
        return self._making[0] if self._making else None

    def _child(self, request_fd: int, answer_fd: int) -> NoReturn:
        """In the forked child: make the pages an utterance writes its own while it waits,
        read the request (EOF without one: the worker is gone), answer it, leave."""
        code = 1
        try:
            prefault.populate(self._touched or [])
            with os.fdopen(request_fd, "rb") as pipe:
                raw = pipe.read()
            if raw:
                with os.fdopen(answer_fd, "wb") as pipe:
                    self._reply(raw, pipe)
            code = 0
        finally:
            os._exit(code)

    def _reply(self, raw: bytes, pipe: IO[bytes]) -> None:
        """Speak one request onto `pipe` as it is spoken (`espeak_frames`): int16 pieces, or,
        when the request says `shaped`, what the engine's `Making` makes of them (float32). A
        worker that stopped listening stops the utterance."""
        request = json.loads(raw)
        making = self._making[1] if request.get("shaped") and self._making else None
        held: list[bytes] = []
        failed: list[Exception] = []  # in `each`, where ctypes would print it and go on
        spoken = 0

        def flush(last: bool) -> bool:
            """Send what is held, shaped when asked; True when nobody listens any more."""
            body = b"".join(held)
            held.clear()
            if making is not None:
                made = making.feed(to_float32(np.frombuffer(body, dtype=np.int16)))
                body = (np.concatenate([made, making.finish()]) if last else made).tobytes()
            return bool(body) and frames.send(pipe, b"C", body)

        def each(piece: Piece) -> bool:
            # Half a second at a time: every frame wakes the worker, and a frame per 60 ms
            # piece cost it more than the overlap saved (30 characters: 27.6 ms against 24.3).
            nonlocal spoken
            spoken += piece.size
            held.append(piece.tobytes())
            try:
                return sum(map(len, held)) >= self.sample_rate and flush(last=False)  # 2 B each
            except Exception as exc:  # raised once the library has stopped (below)
                failed.append(exc)
                return True

        refused: Exception | None = None
        try:
            voice, prosody = request["voice"], Prosody(**request["prosody"])
            self._speak(request["text"], voice, prosody, request["seed"], each=each)
        except (ValueError, RuntimeError) as exc:  # the request's (an unknown voice)
            refused = exc
        if failed:  # the child's own failure: it ends without an end frame (a cut answer)
            raise failed[0]
        if refused is not None:
            frames.send(pipe, b"E", str(refused).encode())
        elif not flush(last=True):
            frames.send(pipe, b"A", spoken.to_bytes(8, "little"))

    def _speak(
        self,
        text: str,
        voice: str | None,
        prosody: Prosody,
        seed: int | None,
        each: Callable[[Piece], bool] | None = None,
    ) -> Piece:
        """One utterance in `voice` (else the engine's); see `_utter`."""
        self._set_voice(voice or self.default_voice)
        return utter(self._lib, text, espeak_parameters(prosody), seed, each)

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


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _languages(voice_file: Path) -> list[str]:
    """The languages an eSpeak voice file says it speaks (its `language <code>` lines)."""
    words = [line.split() for line in voice_file.read_text("utf-8", errors="replace").splitlines()]
    return [w[1] for w in words if len(w) > 1 and w[0] == "language"]
