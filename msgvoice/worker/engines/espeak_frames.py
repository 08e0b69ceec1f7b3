"""How a pristine eSpeak child answers its worker, on a pipe of its own: frames of a kind byte
and a byte count (8 bytes, little-endian). b"C" and samples as they are spoken (int16 as eSpeak
speaks them, or float32 made for the job's output), then b"A" and the count of samples spoken
(8 bytes); or b"E" and the error. The end frame shows the answer whole without waiting for the
child's exit; an answer that stops before it, or stalls, is cut (the child died or is stuck)."""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Generator
from typing import IO

import numpy as np

from msgvoice.worker.engines.espeak_library import Piece
from msgvoice.worker.protocol import Samples

ANSWER_WAIT_S = 10.0
"""The longest a worker waits for any part of a child's answer. eSpeak speaks half a second of
audio in about a millisecond: a child silent this long is stuck (it is killed, and that
utterance fails), and the worker goes on well within the job's own timeout."""

ANSWER_PIPE_BYTES = 1 << 20
"""What a child may say ahead of its worker reading it: 5 s of shaped audio at 48 kHz (a pipe
holds 64 KiB, a third of a second, so a child would wait on a worker still encoding)."""

Spoken = Generator[Piece | Samples, None, int]
"""An utterance's pieces as they come; it returns how many samples eSpeak spoke."""


class Cut(Exception):
    """A child's answer that ended before its end frame (the child died or is stuck)."""


def widen(fd: int) -> None:
    """Give the answer pipe `ANSWER_PIPE_BYTES` (Linux's F_SETPIPE_SZ; elsewhere as made)."""
    with contextlib.suppress(ImportError, AttributeError, OSError):
        import fcntl  # noqa: PLC0415 (POSIX only)

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, ANSWER_PIPE_BYTES)


def send(pipe: IO[bytes], kind: bytes, body: bytes = b"") -> bool:
    """One frame; True when nobody listens any more (the utterance can stop)."""
    try:
        pipe.write(kind + len(body).to_bytes(8, "little") + body)
        pipe.flush()
    except OSError:
        return True
    return False


def heard(fd: int, dtype: type[np.generic], within_s: float) -> Spoken:
    """A child's answer on `fd`: its pieces (of `dtype`) as they come, then the count of
    samples it spoke; ValueError for its error, Cut when it ends early, is not what a child
    sends (a frame's byte count is not trusted before its kind is), or stalls `within_s`."""
    ready = select.poll()  # poll, not select: any descriptor number
    ready.register(fd, select.POLLIN)
    while True:
        head = np.empty(9, dtype=np.uint8)
        _fill(fd, head.data, ready, within_s)
        kind, size = head[:1].tobytes(), int.from_bytes(head[1:].tobytes(), "little")
        if kind not in (b"C", b"A", b"E") or (kind == b"C" and size % np.dtype(dtype).itemsize):
            raise Cut
        body = np.empty(size, dtype=np.uint8)
        _fill(fd, body.data, ready, within_s)
        if kind == b"E":
            raise ValueError(body.tobytes().decode(errors="replace"))
        if kind == b"A":
            return int.from_bytes(body.tobytes(), "little")
        yield body.view(dtype)


def _fill(fd: int, view: memoryview, ready: select.poll, within_s: float) -> None:
    """Read exactly as much as `view` holds, each part within `within_s`, or Cut."""
    got = 0
    while got < len(view):
        if not ready.poll(within_s * 1000):
            raise Cut(f"the child said nothing for {within_s:g} s")
        n = os.readv(fd, [view[got:]])
        if not n:
            raise Cut
        got += n
