"""eSpeak's pristine children: each utterance is spoken by a forked copy of the engine, which
makes the pages it will write its own while it waits (changing how fast it answers, never
what it says) and answers in pieces as it speaks; one that dies, or whose worker stops
listening, costs only its own utterance."""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from msgvoice.sound import audio
from msgvoice.speech.formats import output_rate
from msgvoice.worker.engines import prefault
from msgvoice.worker.engines.espeak import SAMPLE, EspeakEngine
from msgvoice.worker.protocol import Prosody, Shape

linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or prefault.own_pages() is None,
    reason="no readable /proc/self/pagemap here",
)


def faults_in_child(before: prefault.Runs, work: object) -> int:
    """Minor page faults a forked child takes doing `work()` after populating `before`."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            prefault.populate(before)
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            work()  # type: ignore[operator]
            spent = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
            os.write(write_fd, str(spent).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return int(answer)


@linux
def test_a_child_that_populated_the_learned_pages_copies_few_on_the_clock() -> None:
    """Once the engine has spoken, a probe learns the pages a child's answer to the sample
    writes; a child that made them its own ahead copies at most half as many while it answers
    as one that did not."""
    engine = EspeakEngine("cmn")
    engine.prepare()
    assert engine._touched is None  # nothing learned before the engine has spoken
    engine.synthesize("你好", None, Prosody(), None)
    engine.prepare()
    learned = engine._touched
    assert learned and all(start % os.sysconf("SC_PAGE_SIZE") == 0 for start, _ in learned)

    request = json.dumps({"text": SAMPLE, "voice": None, "prosody": {}, "seed": None}).encode()

    def speak() -> None:  # what a child does with a request
        with open(os.devnull, "wb") as nowhere:
            engine._reply(request, nowhere)

    cold, warm = faults_in_child([], speak), faults_in_child(learned, speak)
    assert warm * 2 < cold, (warm, cold)


def test_populated_children_say_exactly_what_a_fresh_engine_says() -> None:
    """Populating pages never changes their contents: utterance after utterance (Chinese,
    English, another voice, a seed) is byte-identical to the same request to a fresh engine,
    and an engine with nothing learned (another OS) says the same."""
    engine = EspeakEngine("cmn")
    requests = [
        ("你好，世界", None, 0),
        ("Good night, 晚安。", None, 7),
        ("hello there", "en-us", 3),
    ]
    said = [
        engine.synthesize(text, voice, Prosody(), None, seed)[0] for text, voice, seed in requests
    ]
    unlearned = EspeakEngine("cmn")
    unlearned._touched = []
    for (text, voice, seed), samples in zip(requests, said, strict=True):
        fresh, _ = EspeakEngine("cmn").synthesize(text, voice, Prosody(), None, seed)
        plain, _ = unlearned.synthesize(text, voice, Prosody(), None, seed)
        assert samples.size > 1000 and np.array_equal(samples, fresh)
        assert np.array_equal(plain, fresh)


LONG = "那真是太好了！保持这种好心情，今天注定会是个充满阳光的日子。"
WANTED = {
    "format": "ogg", "streaming": False, "opus_rate_hz": 48_000, "opus_complexity": 0,
    "opus_bitrate_kbps": 64, "fade_ms": 8.0, "gap_ms": 180.0, "silence_db": -50.0,
    "stretch": 1.0,
}  # fmt: skip


def shape_of(engine: EspeakEngine, text: str, shape: Shape) -> tuple[np.ndarray, int]:
    """An utterance streamed with `shape`: the output's samples joined, and the count the
    engine says it spoke."""
    pieces, _ = engine.stream(text, None, Prosody(), None, shape=shape)
    got = []
    try:
        while True:
            got.append(next(pieces))
    except StopIteration as end:
        return np.concatenate(got), end.value


def test_a_child_makes_the_output_of_what_it_speaks_as_the_worker_would() -> None:
    """With a job's `shape`, what eSpeak speaks comes shaped, stretched and resampled for the
    output: by the child as it speaks once the engine has made that shape ready before the
    fork, by the worker otherwise (the first job, another speed). Either way it is exactly
    the whole utterance shaped in one piece, and the count is of the samples spoken."""
    engine = EspeakEngine("cmn")
    spoken, rate = EspeakEngine("cmn").synthesize(LONG, None, Prosody(), None)
    plain, slow = Shape.of(WANTED), Shape.of({**WANTED, "stretch": 1.5})
    out_rate = output_rate("ogg", rate, 48_000)
    # The same output asked for with its rate spelt out (a joined job's later segments).
    spelt = Shape.of({**WANTED, "streaming": True, "rate": out_rate, "follows": True})
    theirs = []
    for shape in (plain, spelt, slow, slow, plain):
        engine.prepare()
        theirs.append(engine._ready is not None and engine._ready.shape == shape.at(rate))
        made, count = shape_of(engine, LONG, shape)
        factor = 1.5 if shape == slow else 1.0
        whole = audio.piece(spoken, rate, out_rate, audio.Shaping(8.0, 180.0, -50.0), factor)
        assert count == spoken.size and made.dtype == np.float32
        assert np.array_equal(made, whole), (shape, theirs)
    assert theirs == [False, True, False, True, False]  # the child's once made ready for it


@pytest.mark.parametrize("shaped", [False, True], ids=["plain", "shaped"])
@pytest.mark.parametrize("dies", ["raises", "killed before answering", "killed mid-answer"])
def test_an_espeak_child_that_dies_fails_its_utterance_and_the_next_one_speaks(
    dies: str, shaped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pristine child raising something nobody listed, or killed before it answers or
    after its first pieces went out, speaking plainly or shaping for a job's output: that
    utterance is a RuntimeError naming the child's status (its answer has no end frame), the
    child is reaped, and the next utterance is byte-identical to one from a fresh engine."""
    engine = EspeakEngine("cmn")
    expected, _ = EspeakEngine("cmn").synthesize(LONG, None, Prosody(), None)
    shape = Shape.of(WANTED).at(engine.sample_rate) if shaped else None
    if shape is not None:
        shaped_before, _count = shape_of(engine, LONG, shape)  # the next child shapes
    speak = engine._speak

    def broken(*args: object, each: Callable[[np.ndarray], bool] | None = None) -> np.ndarray:
        if dies == "raises":
            raise MemoryError("nobody listed this")
        if dies == "killed before answering":
            os.kill(os.getpid(), signal.SIGKILL)
        heard = [0]

        def then_die(piece: np.ndarray) -> bool:
            heard[0] += 1
            if heard[0] == 12:  # nine 60 ms pieces make a frame: one went out
                os.kill(os.getpid(), signal.SIGKILL)
            return each(piece) if each else False

        return speak(*args, each=then_die)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "_speak", broken)
    engine.prepare()  # the child is forked with the broken _speak
    assert engine._ready is not None and engine._ready.shape == shape
    pieces, _ = engine.stream(LONG, None, Prosody(), None, shape=shape)
    came = []
    with pytest.raises(RuntimeError, match=r"eSpeak synthesis failed \(child status [1-9]"):
        came.extend(pieces)
    assert bool(came) == (dies == "killed mid-answer")
    monkeypatch.setattr(engine, "_speak", speak)
    again, _ = engine.synthesize(LONG, None, Prosody(), None)
    assert again.tobytes() == expected.tobytes()
    if shape is not None:
        engine.prepare()
        assert np.array_equal(shape_of(engine, LONG, shape)[0], shaped_before)
    engine.prepare()  # the next child forked, every one that answered reaped
    assert engine._ready is not None and not engine._spent


def test_a_worker_that_stops_listening_costs_only_that_utterance() -> None:
    """A worker that takes the first piece of a long utterance and stops reading (its encode
    failed) stops the child mid-sentence: nothing hangs, the child is reaped, and the next
    utterance is byte-identical to one from a fresh engine."""
    engine = EspeakEngine("cmn")
    expected, _ = EspeakEngine("cmn").synthesize("你好", None, Prosody(), None)
    pieces, _ = engine.stream(LONG * 20, None, Prosody(), None)
    assert next(pieces).size > 0
    pieces.close()  # type: ignore[attr-defined]
    again, _ = engine.synthesize("你好", None, Prosody(), None)
    assert again.tobytes() == expected.tobytes()
    engine.prepare()
    assert engine._ready is not None and not engine._spent


def test_an_encode_that_fails_mid_sentence_is_that_jobs_error_and_the_worker_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's encoder raising something nobody listed while eSpeak is still speaking a
    one-segment job: the job is answered with that error (the worker does not end), the child
    is stopped and reaped, and the next job's output is made in full."""
    from msgvoice.sound.encoder import Encoder  # noqa: PLC0415
    from msgvoice.worker import main  # noqa: PLC0415

    engine = EspeakEngine("cmn")
    params = {"text": LONG * 4, "voice": None, "prosody": {}, "output": WANTED}
    feed = Encoder.feed
    fed = [0]

    def breaks(self: Encoder, piece: np.ndarray) -> bytes:
        fed[0] += 1
        if fed[0] == 3:
            raise OSError(5, "Input/output error")
        return feed(self, piece)

    monkeypatch.setattr(Encoder, "feed", breaks)
    failed, payload = main.answer(engine, "synthesize", params, True)
    assert failed == {
        "ok": False,
        "error": {"type": "OSError", "message": "[Errno 5] Input/output error"},
    }
    assert payload == b""
    monkeypatch.setattr(Encoder, "feed", feed)
    made, data = main.answer(engine, "synthesize", {**params, "text": LONG}, True)
    assert made["ok"] and made["result"]["output"]["frames"] > 48_000 and len(data) > 1000
    engine.prepare()
    assert engine._ready is not None and not engine._spent


def test_a_child_whose_shaping_fails_fails_only_that_utterance() -> None:
    """Shaping that raises once in the child, inside the library's callback (where ctypes
    would print the error and let the utterance go on without that piece), stops the
    utterance and fails it as a cut answer; the next child, made ready properly, speaks in
    full."""
    engine = EspeakEngine("cmn")
    shape = Shape.of(WANTED).at(engine.sample_rate)  # as the engine holds it
    want, _ = shape_of(engine, LONG, shape)

    class FailsOnce:
        def __init__(self) -> None:
            self.real, self.failed = shape(engine.sample_rate), False

        def feed(self, samples: np.ndarray) -> np.ndarray:
            if not self.failed:
                self.failed = True
                raise MemoryError("nobody listed this")
            return self.real.feed(samples)

        def finish(self) -> np.ndarray:
            return self.real.finish()

    engine._making = (shape, FailsOnce())
    engine.prepare()
    with pytest.raises(RuntimeError, match=r"eSpeak synthesis failed \(child status [1-9]"):
        shape_of(engine, LONG, shape)
    engine._making = None
    engine.prepare()
    assert engine._ready is not None and engine._ready.shape == shape
    again, count = shape_of(engine, LONG, shape)
    assert np.array_equal(again, want) and count > 0


def test_a_worker_whose_engine_cannot_get_ready_answers_the_next_request(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Forking the next child while idle fails (EAGAIN: the user's process limit): the worker
    says so in one line and goes on, and the next request forks its child itself."""
    import errno  # noqa: PLC0415
    import io  # noqa: PLC0415

    from msgvoice.worker import main  # noqa: PLC0415

    engine = EspeakEngine("cmn")
    fork, refused = os.fork, []

    def once_refused() -> int:
        if not refused:
            refused.append(True)
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return fork()

    monkeypatch.setattr(os, "fork", once_refused)
    requests = io.StringIO(
        json.dumps({"id": 1, "method": "synthesize", "params": {"text": "你好"}})
        + "\n"
        + json.dumps({"id": 2, "method": "shutdown"})
        + "\n"
    )
    out = io.BytesIO()
    main.serve(engine, requests, out)
    first = json.loads(out.getvalue().split(b"\n", 1)[0])
    assert refused and first["id"] == 1 and first["ok"] and first["result"]["samples"] > 1000
    assert "not ready ahead of the next request: [Errno 11]" in caplog.text
    assert not [r for r in caplog.records if r.exc_info]


def test_a_child_never_collects_the_workers_garbage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Garbage the worker has not collected yet (an abandoned PyAV encoder: freeing its filter
    graph joins FFmpeg's threads, which a forked child does not have, and waited forever) is
    never collected in a child, however much the child allocates; the worker collects it."""
    import gc  # noqa: PLC0415

    collected_in = tmp_path / "collected"

    class Litter:
        def __del__(self) -> None:
            with collected_in.open("a") as marks:
                marks.write(f"{os.getpid()}\n")

    engine = EspeakEngine("cmn")
    speak = engine._speak

    def eager(*args: object, **kwargs: object) -> np.ndarray:  # in the child
        gc.set_threshold(1)  # any allocation now would start a collection
        return speak(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "_speak", eager)
    threshold = gc.get_threshold()
    gc.collect()
    try:
        gc.set_threshold(1_000_000)  # nothing collected here until asked
        litter = Litter()
        litter.me = litter  # type: ignore[attr-defined]  # a cycle: only the collector frees it
        del litter
        engine.prepare()
        assert shape_of(engine, LONG, Shape.of(WANTED))[1] > 0
    finally:
        gc.set_threshold(*threshold)
    engine.prepare()  # the answered child reaped: whatever it did is done
    gc.collect()
    assert collected_in.read_text().split() == [str(os.getpid())]


@pytest.mark.parametrize("stalls", ["before answering", "mid-answer"])
def test_a_stuck_child_is_stopped_and_fails_only_its_utterance(
    stalls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that stops saying anything (stuck before its first piece or after some) is
    killed once the worker has waited `ANSWER_WAIT_S` for it: that utterance fails, saying
    so, the worker is not held, and the next utterance is byte-identical to a fresh engine's."""
    import time  # noqa: PLC0415

    from msgvoice.worker.engines import espeak_frames  # noqa: PLC0415

    engine = EspeakEngine("cmn")
    expected, _ = EspeakEngine("cmn").synthesize(LONG, None, Prosody(), None)
    speak = engine._speak

    def stuck(*args: object, each: Callable[[np.ndarray], bool] | None = None) -> np.ndarray:
        heard = [0]

        def then_stall(piece: np.ndarray) -> bool:
            heard[0] += 1
            if heard[0] == (1 if stalls == "before answering" else 12):
                time.sleep(60)  # stuck, as a child in a deadlock is
            return each(piece) if each else False

        return speak(*args, each=then_stall)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "_speak", stuck)
    monkeypatch.setattr(espeak_frames, "ANSWER_WAIT_S", 0.5)
    engine.prepare()
    pieces, _ = engine.stream(LONG, None, Prosody(), None)
    came = []
    with pytest.raises(RuntimeError, match=r"said nothing for 0.5 s"):  # not after its 60 s
        came.extend(pieces)
    assert bool(came) == (stalls == "mid-answer")
    monkeypatch.setattr(engine, "_speak", speak)
    again, _ = engine.synthesize(LONG, None, Prosody(), None)
    assert again.tobytes() == expected.tobytes()
    engine.prepare()
    assert engine._ready is not None and not engine._spent
