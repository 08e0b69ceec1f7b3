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


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, where the C library is glibc."""
    if not sys.platform.startswith("linux"):
        return None  # macOS's allocator hands freed pages back by itself
    try:
        return ctypes.CDLL(None).malloc_trim
    except AttributeError:  # musl and others have no malloc_trim
        return None


def give_back_heap() -> None:
    """Return the heap a burst freed to the kernel. glibc keeps freed memory in its arenas (one
    per thread that encoded): measured here, the daemon stayed at 105 MB after bursts of /tts and
    fell to 83 MB with a trim. A few ms; call it in a thread when the daemon goes idle."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
