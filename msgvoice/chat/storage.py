"""Whether the state dir takes writes: a full disk is a state of the daemon, not a crash.

When a write fails for lack of space (ENOSPC or EDQUOT from the file system, "database or disk
is full" from sqlite) or a file cannot be opened for lack of descriptors (EMFILE, ENFILE: see
`speech.job.exhausted`), the storage is marked full: new work is refused with a clear answer,
journalled work waits, and the daemon stays up. Free space under `min_free_mb` marks it full
too: `watch()` looks every 10 s, and intake and /healthz look as they ask (at most once a
second), so a disk filled by something else is refused at once. `watch()` then frees what
retention may free and, once there is room again (free space over `min_free_mb` and a real
test write that succeeds, so files open again too), marks it usable: waiting work proceeds by
itself.

The state dir holds every chat's text (the journal) and every voice note, so it is its owner's
alone: made 0700, and one found readable by others is tightened at start (0700 folders, 0600
files), with one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

CHECK_EVERY_S = 10.0
RECHECK_FULL_S = 1.0
LOOK_EVERY_S = 1.0
"""At most this often intake and /healthz look at the free space themselves (a statvfs)."""
PROBE_BYTES = 64 * 1024


class Storage:
    """The state dir's room for writes, watched."""

    def __init__(self, root: Path, min_free_mb: float) -> None:
        self.root, self.min_free_mb = root, min_free_mb
        self.full_reason: str | None = None
        self.room = asyncio.Event()
        self.room.set()
        self._marked = asyncio.Event()
        """Set when a write found it full: the watch looks at once."""
        self.times_full = 0
        self._looked = -LOOK_EVERY_S

    @property
    def full(self) -> bool:
        """No room for writes right now."""
        return self.full_reason is not None

    def refusal(self) -> str | None:
        """Why no new work is taken, or None: the free space is looked at first (at most
        once a second), not only at the watch's next round."""
        now = time.monotonic()
        if self.full_reason is None and now - self._looked >= LOOK_EVERY_S:
            self._looked = now
            with contextlib.suppress(OSError):  # the watch will say what is wrong
                self._under_floor(self.free_mb())
        return self.full_reason

    def _under_floor(self, free: float) -> None:
        if not self.full and free < self.min_free_mb:
            self.mark_full(f"{free:.1f} MB free, under the {self.min_free_mb:.0f} MB floor")

    def mark_full(self, reason: str) -> None:
        """Record that a write failed for lack of space (logged once per episode)."""
        if self.full_reason is None:
            self.times_full += 1
            log.error(
                "state dir %s is full, refusing new work until there is room: %s", self.root, reason
            )
        self.full_reason = reason
        self.room.clear()
        self._marked.set()

    def free_mb(self) -> float:
        """Free space where the state dir lives."""
        return shutil.disk_usage(self.root).free / 2**20

    def _writable(self) -> bool:
        probe = self.root / ".msgvoice-space-probe"
        try:
            with probe.open("wb") as out:
                out.write(b"\0" * PROBE_BYTES)
                out.flush()
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    async def watch(self, make_room: Callable[[], object]) -> None:
        """Until cancelled: mark full when free space runs under `min_free_mb`; while full,
        make room (retention) and clear the state once writes work again."""
        while True:
            self._under_floor(await asyncio.to_thread(self.free_mb))
            if self.full:
                with contextlib.suppress(Exception):  # retention on a full disk may fail too
                    make_room()  # on the loop: it uses the journal's connection
                free = await asyncio.to_thread(self.free_mb)
                if free >= self.min_free_mb and await asyncio.to_thread(self._writable):
                    log.info(
                        "state dir %s has room again (%.0f MB free): resuming", self.root, free
                    )
                    self.full_reason = None
                    self.room.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._marked.wait(), RECHECK_FULL_S if self.full else CHECK_EVERY_S
                )
            self._marked.clear()


def keep_private(root: Path) -> None:
    """Make the state dir (and what is in it) readable by its owner only."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not root.stat().st_mode & 0o077:
        return
    tightened = 0
    for folder, _dirs, files in os.walk(root):
        for path in [Path(folder), *(Path(folder) / f for f in files)]:
            with contextlib.suppress(OSError):  # a file retention removed meanwhile
                mode = path.lstat().st_mode
                if stat.S_IMODE(mode) & 0o077 and not stat.S_ISLNK(mode):
                    path.chmod(stat.S_IMODE(mode) & (0o700 if stat.S_ISDIR(mode) else 0o600))
                    tightened += 1
    log.warning(
        "state dir %s was readable by other users; made it its owner's alone (%d entries)",
        root,
        tightened,
    )
