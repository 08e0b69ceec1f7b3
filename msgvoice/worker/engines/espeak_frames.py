"""How a pristine eSpeak child answers its worker, on a pipe of its own: frames of a kind byte
and a byte count (8 bytes, little-endian). b"C" and samples as they are spoken (int16 as eSpeak
speaks them, or float32 made for the job's output), then b"A" and the count of samples spoken
(8 bytes); or b"E" and the error. The end frame shows the answer whole without waiting for the
child's exit; an answer that stops before it is cut (the child died)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Generator
from typing import IO

import numpy as np

from msgvoice.worker.engines.espeak_library import Piece
from msgvoice.worker.protocol import Samples

ANSWER_PIPE_BYTES = 1 << 20
"""What a child may say ahead of its worker reading it: 5 s of shaped audio at 48 kHz (a pipe
holds 64 KiB, a third of a second, so a child would wait on a worker still encoding)."""

Spoken = Generator[Piece | Samples, None, int]
"""An utterance's pieces as they come; it returns how many samples eSpeak spoke."""


class Cut(Exception):
    """A child's answer that ended before its end frame (the child died)."""


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


def heard(pipe: io.BufferedReader, dtype: type[np.generic]) -> Spoken:
    """A child's answer: its pieces (of `dtype`) as they come, then the count of samples it
    spoke; ValueError for its error, Cut when it ends early or is not what a child sends (a
    frame's byte count is not trusted before its kind is)."""
    while True:
        head = pipe.read(9)
        if len(head) < 9:
            raise Cut
        kind, size = head[:1], int.from_bytes(head[1:], "little")
        if kind not in (b"C", b"A", b"E") or (kind == b"C" and size % np.dtype(dtype).itemsize):
            raise Cut
        body = np.empty(size, dtype=np.uint8)
        got = 0
        while got < size and (n := pipe.readinto(body.data[got:])):
            got += n
        if got < size:
            raise Cut
        if kind == b"E":
            raise ValueError(body.tobytes().decode(errors="replace"))
        if kind == b"A":
            return int.from_bytes(body.tobytes(), "little")
        yield body.view(dtype)
