"""The worker program: load one engine, then answer one JSON request per line.

Run as `python -m msgvoice.worker.main --engine NAME --options JSON`, possibly under another
interpreter; it needs only the standard library, numpy and the engine (and PyAV and soxr to
finish a job's output itself: `output.py`; without them it sends samples). The protocol is in
`protocol.py`. Anything the engine prints lands on stderr, never on the protocol.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

import numpy as np

from msgvoice.worker import output
from msgvoice.worker.protocol import (
    ENGINES,
    PROTOCOL_FD_ENV,
    RAW_FORMATS,
    Engine,
    EngineUnavailable,
    Prosody,
    SampleError,
    Samples,
    SynthesisAnswer,
    stage_times,
    to_float32,
    to_raw,
)

log = logging.getLogger("msgvoice.worker")
PIPE_BYTES = 1 << 20
"""The protocol pipe's capacity asked for: a few seconds of audio at once."""


def _protocol_stream() -> IO[bytes]:
    """Keep the real stdout for the protocol and point fd 1 (and print) at stderr."""
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ[PROTOCOL_FD_ENV] = str(fd)
    _widen_pipe(fd)
    return os.fdopen(fd, "wb")


def _widen_pipe(fd: int) -> None:
    """Let a segment's audio cross the pipe in one write instead of waiting on the daemon every
    64 KiB (Linux's F_SETPIPE_SZ, at most /proc/sys/fs/pipe-max-size; elsewhere the pipe stays
    as the system makes it)."""
    try:
        import fcntl  # noqa: PLC0415 (POSIX only; the worker needs it nowhere else)

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass


def send(out: IO[bytes], message: dict[str, Any], payload: bytes = b"") -> None:
    """One protocol message, then its payload (the audio of a `synthesize` answer)."""
    if payload:
        message = {**message, "bytes": len(payload)}
    out.write(json.dumps(message, ensure_ascii=False).encode() + b"\n")
    out.write(payload)  # a large write goes straight to the pipe, not copied into the line
    out.flush()


def _die_with_parent() -> None:
    """Exit when the supervising process is gone, even in the middle of a long synthesis."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes  # noqa: PLC0415

            ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def load_engine(spec: str, options: dict[str, Any]) -> Engine:
    """Import and construct the engine named `spec` (a built-in name or `module:attribute`)."""
    target = ENGINES[spec].target if spec in ENGINES else spec
    module_name, _, attr = target.partition(":")
    if not attr:
        raise EngineUnavailable(f"unknown engine {spec!r}; built-in: {', '.join(ENGINES)}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineUnavailable(f"engine {spec!r} cannot be imported: {exc}") from exc
    engine: Engine = getattr(module, attr)(**options)
    return engine


def synthesize(
    engine: Engine, params: dict[str, Any], takes_seed: bool
) -> tuple[SynthesisAnswer, bytes]:
    """Speak one request's text: the answer and its samples as the protocol carries them, or
    the job's finished output when the request asks for it (see output.py), encoded as the
    engine speaks where it streams (`stream`, same arguments, pieces as they come)."""
    started = time.perf_counter()
    seed = params.get("seed")
    extra = {"seed": seed} if seed is not None and takes_seed else {}
    why = None if extra or seed is None else f"{engine.name} takes no seed"
    args = (
        params["text"],
        params.get("voice"),
        Prosody(**params.get("prosody", {})),
        params.get("emotion"),
    )
    wanted = output.check(params.get("output"))
    stream = getattr(engine, "stream", None)
    if wanted is not None and callable(stream):
        shapes = _takes(getattr(stream, "__func__", stream), "shape")
        shape = {"shape": output.Shape.of(wanted)} if shapes else {}
        pieces, rate = stream(*args, **extra, **shape)
        heard = Heard(pieces, shaped=shapes)
        try:
            made, data = output.finish(heard, int(rate), wanted, shaped=shapes)
        finally:  # an encode that failed part way stops the engine now, not when collected
            getattr(pieces, "close", lambda: None)()
        answer = _answer(engine, int(rate), heard.samples, heard.done - started, why)
        if heard.samples:
            answer["output"] = made
            return answer, data
        return answer, b""
    samples, rate = engine.synthesize(*args, **extra)
    synth_s = time.perf_counter() - started
    if wanted is None:
        raw, sample_format = to_raw(samples)
        count = len(raw) // np.dtype(RAW_FORMATS[sample_format]).itemsize
        answer = _answer(engine, int(rate), count, synth_s, why)
        answer["sample_format"] = sample_format
        return answer, raw
    audio = to_float32(samples)
    answer = _answer(engine, int(rate), audio.size, synth_s, why)
    if audio.size:
        answer["output"], data = output.finish([audio], int(rate), wanted)
        return answer, data
    return answer, b""


@functools.cache
def _takes(function: Any, keyword: str) -> bool:
    """Whether an engine's method (its function, so no engine is kept) takes `keyword`; asked
    once, as a signature costs 0.4 ms."""
    return keyword in inspect.signature(function).parameters


class Heard:
    """An engine's pieces as it speaks them, as float32, counted; `done` is when the last
    came (perf_counter). Each piece is scaled alone, which is exact for integer PCM (eSpeak's);
    an engine whose floats may run hot is scaled by its whole output, so it does not stream.
    `shaped`: the engine made the pieces the output's (`stream`'s `shape`); its stream then
    returns the count of samples it spoke."""

    def __init__(self, pieces: Iterable[Any], shaped: bool = False) -> None:
        self.pieces: Any = pieces
        self.shaped, self.samples, self.done = shaped, 0, 0.0

    def __iter__(self) -> Iterator[Samples]:
        if self.shaped:
            self.samples = yield from self.pieces
        else:
            for piece in self.pieces:
                audio = to_float32(piece)
                self.samples += audio.size
                yield audio
        self.done = time.perf_counter()


def _answer(
    engine: Engine, rate: int, samples: int, synth_s: float, unseeded_why: str | None
) -> SynthesisAnswer:
    return {
        "sample_rate": rate,
        "samples": samples,
        "duration_s": samples / rate,
        "synth_s": synth_s,
        "stages": stage_times(engine),
        "unseeded_why": unseeded_why,
        "peak_rss_mb": peak_rss_mb(),
    }


def serve(engine: Engine, requests: IO[str], out: IO[bytes]) -> None:
    """Answer requests until shutdown or end of input. After each answer the engine may get
    ready for the next request (`prepare()`, for engines that have it), off the clock; if it
    cannot (no process left to fork), the next request gets it ready on its own clock, and
    fails alone if it still cannot."""
    takes_seed = "seed" in inspect.signature(engine.synthesize).parameters
    prepare = getattr(engine, "prepare", None)
    while True:
        if callable(prepare):
            try:
                prepare()
            except Exception as exc:
                log.warning("engine not ready ahead of the next request: %s", exc)
        line = requests.readline()
        if not line:
            return
        try:
            request = json.loads(line)
            req_id, method = request["id"], request["method"]
        except (ValueError, KeyError, TypeError):
            bad = {"type": "BadRequest", "message": line[:200]}
            send(out, {"id": None, "ok": False, "error": bad})
            continue
        if method == "shutdown":
            send(out, {"id": req_id, "ok": True, "result": {}})
            return
        message, payload = answer(engine, method, request.get("params", {}), takes_seed)
        send(out, {"id": req_id, **message}, payload)


def answer(
    engine: Engine, method: str, params: dict[str, Any], takes_seed: bool
) -> tuple[dict[str, Any], bytes]:
    """(`{"ok": True, "result"}` and its audio), or `{"ok": False, "error"}`: a ValueError is
    the request's fault (an unknown voice, text the engine refuses) and is logged in one line;
    anything else is the engine's, logged with its traceback. Neither ends the worker."""
    error: Exception
    try:
        if method == "synthesize":
            result, audio = synthesize(engine, params, takes_seed)
            return {"ok": True, "result": result}, audio
        if method == "ping":
            facts = {"peak_rss_mb": peak_rss_mb(), "engine": engine.name, "facts": engine.facts()}
            return {"ok": True, "result": facts}, b""
        raise ValueError(f"unknown method {method!r}")
    except SampleError as exc:  # unusable output: the engine's fault, not the request's
        log.exception("request failed")
        error = exc
    except ValueError as exc:
        log.warning("request refused: %s", exc)
        error = exc
    except EngineUnavailable as exc:  # e.g. every remote server down: the fallbacks speak
        log.warning("engine unavailable: %s", exc)
        error = exc
    except Exception as exc:  # one request's failure is its answer, not the worker's end
        log.exception("request failed")
        error = exc
    return {"ok": False, "error": {"type": type(error).__name__, "message": str(error)}}, b""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process."""
    parser = argparse.ArgumentParser(prog="msgvoice.worker")
    parser.add_argument("--engine", required=True)
    parser.add_argument("--options", default="{}")
    args = parser.parse_args(argv)
    out = _protocol_stream()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    _die_with_parent()
    started = time.perf_counter()
    try:
        engine = load_engine(args.engine, json.loads(args.options))
    except EngineUnavailable as exc:  # a missing file, voice or package: said in one line
        log.error("engine %s cannot load here: %s", args.engine, exc)
        send(out, {"event": "failed", "error": f"EngineUnavailable: {exc}", "lasting": True})
        return 3
    except Exception as exc:
        log.exception("engine %s failed to load", args.engine)
        send(out, {"event": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return 3
    ready = {
        "event": "ready",
        "engine": engine.name,
        "pid": os.getpid(),
        "load_s": time.perf_counter() - started,
        "facts": engine.facts(),
        "numpy": np.__version__,
    }
    send(out, ready)
    output.warm_up()
    serve(engine, sys.stdin, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
