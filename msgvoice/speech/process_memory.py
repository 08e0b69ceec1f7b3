"""How much memory a worker holds (what the kernel would kill it for), and the daemon's own
heap handed back after a burst.

On macOS that is the physical footprint (what Activity Monitor's "Memory" column and jetsam
use), which counts compressed and GPU-shared (MPS) pages that RSS misses. On Linux it is the
proportional set size (PSS): the worker's children are included, and pages a forked child
still shares with its parent (eSpeak's pristine child) count once, not twice. Elsewhere RSS.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import psutil

_MB = 1024 * 1024


class _RusageInfoV0(ctypes.Structure):
    _fields_ = [  # <libproc.h> rusage_info_v0
        ("ri_uuid", ctypes.c_uint8 * 16),
        ("ri_user_time", ctypes.c_uint64),
        ("ri_system_time", ctypes.c_uint64),
        ("ri_pkg_idle_wkups", ctypes.c_uint64),
        ("ri_interrupt_wkups", ctypes.c_uint64),
        ("ri_pageins", ctypes.c_uint64),
        ("ri_wired_size", ctypes.c_uint64),
        ("ri_resident_size", ctypes.c_uint64),
        ("ri_phys_footprint", ctypes.c_uint64),
        ("ri_proc_start_abstime", ctypes.c_uint64),
        ("ri_proc_exit_abstime", ctypes.c_uint64),
    ]


@cache
def _libproc() -> ctypes.CDLL | None:
    path = ctypes.util.find_library("proc") if sys.platform == "darwin" else None
    return ctypes.CDLL(path) if path else None


def _process_bytes(proc: psutil.Process) -> int:
    lib = _libproc()
    if lib is not None:
        info = _RusageInfoV0()
        if lib.proc_pid_rusage(proc.pid, 0, ctypes.byref(info)) == 0:
            return int(info.ri_phys_footprint)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(psutil.AccessDenied, AttributeError):
            return int(proc.memory_full_info().pss)
    return int(proc.memory_info().rss)


def _children(pid: int) -> list[int] | None:
    """Linux's own list of a process's children (one file per thread), or None where there is
    none. Microseconds, where psutil reads every process on the system (1.5 ms here)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
        return [
            int(child)
            for thread in threads
            for child in Path(f"/proc/{pid}/task/{thread}/children").read_text().split()
        ]
    except (OSError, ValueError):
        return None


def _tree(root: psutil.Process) -> list[psutil.Process]:
    """`root` and all its descendants."""
    if _children(root.pid) is None:
        return [root, *root.children(recursive=True)]
    found, parents = [root], [root.pid]
    while parents:
        for child in _children(parents.pop()) or ():
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(child))
                parents.append(child)
    return found


def _sum_mb(procs: list[psutil.Process], measure: Callable[[psutil.Process], int]) -> float:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += measure(proc)
    return total / _MB


def process_tree_mb(pid: int, over: float = 0.0) -> float:
    """Memory of `pid` and all its descendants in MiB (0 when it is gone). With `over`, a tree
    whose plain RSS is under it answers that RSS: PSS is never above RSS, so the exact figure
    (0.5 ms a process on Linux) is only needed near the limit."""
    try:
        procs = _tree(psutil.Process(pid))
    except psutil.Error:
        return 0.0
    if over and _libproc() is None:
        rss = _sum_mb(procs, lambda proc: int(proc.memory_info().rss))
        if rss <= over:
            return rss
    return _sum_mb(procs, _process_bytes)


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
"""glibc's mallopt parameters (<malloc.h>)."""


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, when it is glibc (the allocator these knobs belong to; macOS's hands
    freed pages back by itself)."""
    return ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None


def tame_malloc() -> None:
    """Keep a long-running daemon's memory near its working set (glibc only): big audio
    buffers always come from mmap and go back when freed (glibc otherwise raises that
    threshold as they are freed and keeps the space), and encoder threads share two arenas.
    Measured here: 115 -> 87 MB after a burst of 48 voice notes over 16 chats."""
    if (libc := _glibc()) is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(M_ARENA_MAX, 2)


def give_back_heap() -> None:
    """Return the heap a burst freed to the kernel. Even tamed, glibc keeps small freed blocks
    in its arenas: measured here, the daemon stayed at 105 MB after bursts of /tts and fell to
    83 MB with a trim. A few ms; call it in a thread when the daemon goes idle."""
    if (libc := _glibc()) is not None:
        libc.malloc_trim(0)
