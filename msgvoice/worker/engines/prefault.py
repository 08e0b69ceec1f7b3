"""The pages a forked child is going to write, learned once and made its own ahead of time.

A child forked from a pristine engine shares every page with its parent until it writes one;
then the kernel copies that page, on the clock of the request that made the write. For eSpeak
that was ~600 copies in a 30-character utterance (about a fifth of its time). `learn` runs a
sample of the work in a probe child and reads which pages became the probe's own (Linux's
/proc/self/pagemap: present, mapped exclusively); `populate` lets a later child copy those pages
while it waits for its request (`MADV_POPULATE_WRITE`: the kernel breaks the sharing without
touching the contents). Where either is missing (another OS, an older kernel), nothing is
learned or populated and the child copies on demand as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

MADV_POPULATE_WRITE = 23
"""<linux/mman.h>, Linux 5.14 and newer; older kernels answer EINVAL."""
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PRESENT, _EXCLUSIVE = np.uint64(1 << 63), np.uint64(1 << 56)

Runs = list[tuple[int, int]]
"""(start address, bytes) of page-aligned runs."""


def own_pages() -> set[int] | None:
    """The addresses of the pages in this process's private writable mappings that are present
    and mapped by it alone; None where the kernel does not say."""
    found: set[int] = set()
    try:
        with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
            for line in maps:
                span, perms = line.split()[:2]
                if perms != "rw-p":
                    continue
                start, end = (int(x, 16) for x in span.split("-"))
                pagemap.seek(start // _PAGE * 8)
                flags = np.frombuffer(pagemap.read((end - start) // _PAGE * 8), dtype=np.uint64)
                mine = np.flatnonzero((flags & _PRESENT != 0) & (flags & _EXCLUSIVE != 0))
                found.update((start + mine * _PAGE).tolist())
    except (OSError, ValueError):
        return None
    return found


def runs_of(pages: set[int]) -> Runs:
    """Sorted page addresses as contiguous runs."""
    runs: Runs = []
    for page in sorted(pages):
        if runs and runs[-1][0] + runs[-1][1] == page:
            runs[-1] = (runs[-1][0], runs[-1][1] + _PAGE)
        else:
            runs.append((page, _PAGE))
    return runs


def fork() -> int:
    """`os.fork`, with the child's cyclic garbage collector off. A child lives for one answer,
    and a collection there would free the parent's uncollected garbage in the child: an
    abandoned PyAV encoder's filter graph joins FFmpeg's threads when it is freed, threads a
    forked child does not have, so the child waited forever (seen after an encode failed part
    way). It would also copy every page that holds an object."""
    pid = os.fork()
    if pid == 0:
        gc.disable()
    return pid


def learn(sample: Callable[[], object]) -> Runs:
    """The pages `sample()` writes, run in a forked probe so this process stays as it was;
    [] where that cannot be learned here."""
    if not hasattr(os, "fork") or not os.path.exists("/proc/self/pagemap"):
        return []
    read_fd, write_fd = os.pipe()
    pid = fork()
    if pid == 0:  # the probe: what became its own while it did the sample
        code = 1
        try:
            os.close(read_fd)
            before = own_pages()
            sample()
            after = own_pages()
            runs = runs_of(after - before) if before is not None and after is not None else []
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(json.dumps(runs).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        raw = pipe.read()
    os.waitpid(pid, 0)
    with contextlib.suppress(ValueError):
        return [(int(start), int(size)) for start, size in json.loads(raw)]
    return []


@cache
def _madvise() -> Any:
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


def populate(runs: Runs) -> None:
    """Make these pages this process's own now (a run that is no longer mapped, or not
    writable, is passed over by the kernel)."""
    for start, size in runs:
        _madvise()(start, size, MADV_POPULATE_WRITE)
