"""Audio files written atomically: each appears only when complete (`AudioWriter` encodes
piece by piece; `write_file` places bytes already encoded, a worker's finished output)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from types import TracebackType

from msgvoice.sound.encoder import AudioError, Encoder, EncodeSettings
from msgvoice.speech.formats import FILE_FORMATS
from msgvoice.worker.samples import Samples


def place(tmp: Path, path: Path) -> Path:
    """Move a finished temporary file into place, with its folder's permissions."""
    os.chmod(tmp, os.stat(path.parent).st_mode & 0o644)
    os.replace(tmp, path)
    return path


def write_file(path: Path, data: bytes) -> Path:
    """`data` as the file `path`, atomically: it appears only when complete."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        return place(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AudioWriter:
    """Write an audio file piece by piece, atomically: the file appears only when complete.

    On error or `abort()` the temporary file is removed and nothing is left behind.
    """

    def __init__(
        self, path: Path, fmt: str, rate: int, settings: EncodeSettings | None = None
    ) -> None:
        if fmt not in FILE_FORMATS:
            raise AudioError(f"unknown format {fmt!r}; use one of {', '.join(FILE_FORMATS)}")
        self.path, self.fmt, self.rate = Path(path), fmt, rate
        self._encoder = Encoder(FILE_FORMATS[fmt], rate, streaming=False, settings=settings)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=path.parent)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._file.write(self._encoder.header())  # a WAV's place-holder header

    def start(self) -> bytes:
        """Nothing to send before the first piece (a file is not streamed)."""
        return b""

    def feed(self, samples: Samples) -> bytes:
        """Append mono float32 samples at the writer's rate (no bytes come back)."""
        self._file.write(self._encoder.feed(samples))
        return b""

    def commit(self) -> Path:
        """Finish the file and move it into place; AudioError (and no file) when nothing was
        fed: no writer ever leaves an empty or undecodable file."""
        try:
            if not self._encoder.frames:
                raise AudioError(f"no audio to write to {self.path.name}")
            self._file.write(self._encoder.finish())
            if header := self._encoder.header():
                self._file.seek(0)
                self._file.write(header)
            self._file.close()
            return place(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the partial file."""
        self._encoder.abort()
        with contextlib.suppress(OSError):
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
        return self._encoder.duration_s
