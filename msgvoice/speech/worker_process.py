"""One running worker program: its pipes, its requests, its escalating stop.

The worker runs in its own process group, so a stop reaches anything the engine spawned. Every
wait is bounded: the ready message, each answer (with the hard memory ceiling watched while it
is awaited), and each step of SIGTERM → grace → SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msgvoice.speech.process_memory import process_tree_mb

log = logging.getLogger(__name__)

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)
PIPE_LIMIT = 1 << 20
"""The protocol reader's buffer: a segment's audio arrives in pieces of up to this size."""


def worker_command(
    python: str, engine: str, options: Mapping[str, Any]
) -> tuple[list[str], dict[str, str]]:
    """The worker program's command line and environment (this msgvoice on its path, so an
    engine's own interpreter runs the same code)."""
    command = [python or sys.executable, "-u", "-m", "msgvoice.worker.main"]
    command += ["--engine", engine, "--options", json.dumps(dict(options))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    # numpy's OpenBLAS starts a thread per core at import (~60 ms of CPU per worker start, on
    # every restart); a worker speaks one job at a time and its engine threads itself (torch,
    # TensorFlow), so one is enough unless the operator says otherwise.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return command, env


class WorkerError(RuntimeError):
    """A job the worker could not complete; the message is fit for a user or a log."""


class WorkerUnavailable(WorkerError):
    """The engine cannot speak right now: its worker cannot start (failed starts, backing
    off), or the engine says it is unavailable (a remote engine whose servers are all down).
    The speaker then asks the fallback engines."""


class RequestRefused(WorkerError):
    """The engine refused the request itself (an unknown voice, text it cannot speak): the
    caller's mistake, not the worker's. The worker carries on."""


class WorkerLost(Exception):
    """The worker died or was killed during a request; `reason` is a restart reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class StartFailed(Exception):
    """The worker did not reach ready; `lasting` when its engine said it cannot load here
    (trying again at once would only say so again)."""

    def __init__(self, why: str, lasting: bool = False) -> None:
        super().__init__(why)
        self.lasting = lasting


class WorkerProcess:
    """A started worker; `start()` returns it once it said ready."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.jobs = 0
        self.job_limit = 0
        self.ready_s = 0.0
        self.ready: dict[str, Any] = {}
        self.retire = ""
        """Set when the worker is to be recycled (the reason); it takes no further job."""
        self._ids = itertools.count(1)
        self._stderr = asyncio.create_task(_forward_stderr(proc))

    @classmethod
    async def start(
        cls, command: list[str], env: dict[str, str], ready_timeout_s: float
    ) -> WorkerProcess:
        """Spawn the worker in a new process group and wait (bounded) for its ready line."""
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                env=env,
                limit=PIPE_LIMIT,
            )
        except OSError as exc:
            raise StartFailed(f"cannot run {command[0]}: {exc}") from None
        worker = cls(proc)
        try:
            async with asyncio.timeout(ready_timeout_s):
                message = await worker.read()
        except (TimeoutError, WorkerLost) as exc:
            await worker.stop("start", grace_s=0, kill=True)
            why = (
                f"not ready within {ready_timeout_s:.0f}s"
                if isinstance(exc, TimeoutError)
                else str(exc)
            )
            raise StartFailed(why) from None
        if message.get("event") != "ready":
            await worker.stop("start", grace_s=0, kill=True)
            why = str(message.get("error") or message)[:500]
            raise StartFailed(why, lasting=bool(message.get("lasting")))
        worker.ready_s = time.monotonic() - started
        worker.ready = message
        return worker

    @property
    def pid(self) -> int:
        """The worker's pid (and process group id)."""
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.returncode is None

    def memory_mb(self, limit_mb: float = 0.0) -> float:
        """Memory of the worker and its children (physical footprint on macOS); exact when over
        `limit_mb` (if given), an upper bound under it."""
        return process_tree_mb(self.pid, over=limit_mb)

    async def call(
        self, method: str, params: dict[str, Any], limit_s: float, poll_s: float, hard_limit_mb: int
    ) -> dict[str, Any]:
        """One request and its answer within `limit_s`, checking memory every `poll_s`."""
        req_id = next(self._ids)
        line = json.dumps({"id": req_id, "method": method, "params": params}, ensure_ascii=False)
        assert self.proc.stdin is not None
        reply = asyncio.ensure_future(self.read())
        deadline = time.monotonic() + limit_s
        try:
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                await self.proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise WorkerLost("crash", f"worker stdin closed: {exc}") from None
            while not reply.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerLost("timeout", f"no answer within {limit_s:.1f}s")
                await asyncio.wait({reply}, timeout=min(left, poll_s))
                if (
                    not reply.done()
                    and hard_limit_mb
                    and (mb := self.memory_mb(hard_limit_mb)) > hard_limit_mb
                ):
                    raise WorkerLost("hard_rss", f"{mb:.0f} MB over the {hard_limit_mb} MB ceiling")
            message = reply.result()
        except asyncio.CancelledError:
            # Its answer would be read as the next request's: this worker takes no further job.
            self.retire = self.retire or "cancelled"
            signal_group(self.pid, signal.SIGKILL)
            raise
        finally:
            reply.cancel()
        if message.get("id") != req_id:
            raise WorkerLost("crash", f"answer to request {message.get('id')}, not {req_id}")
        if not message.get("ok"):
            error = message.get("error") or {}
            if error.get("type") == "ValueError":
                raise RequestRefused(str(error.get("message", "")))
            if error.get("type") == "EngineUnavailable":
                raise WorkerUnavailable(str(error.get("message", "")))
            raise WorkerError(f"{error.get('type', 'Error')}: {error.get('message', '')}")
        result: dict[str, Any] = message.get("result") or {}
        return {**result, "payload": message["payload"]}

    async def read(self) -> dict[str, Any]:
        """One protocol message, with the audio that follows it as `payload` (bytes); EOF,
        garbage and a payload cut short are crashes."""
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            raw = await stdout.readline()
        except ValueError:  # a line over the reader's limit
            raise WorkerLost("crash", "garbage on the protocol: an endless line") from None
        if not raw:
            code = await wait_exit(self.proc, 2.0)
            raise WorkerLost("crash", f"worker exited with code {code}")
        try:
            message = json.loads(raw)
            if not isinstance(message, dict):
                raise ValueError("not an object")
            size = int(message.get("bytes") or 0)
        except (ValueError, TypeError):
            raise WorkerLost("crash", f"garbage on the protocol: {raw[:80]!r}") from None
        try:
            message["payload"] = await stdout.readexactly(size) if size > 0 else b""
        except asyncio.IncompleteReadError as exc:
            code = await wait_exit(self.proc, 2.0)
            raise WorkerLost(
                "crash", f"worker exited with code {code} after {len(exc.partial)} of {size} bytes"
            ) from None
        return message

    async def stop(self, reason: str, grace_s: float, kill: bool = False) -> None:
        """Ask it to shut down (unless `kill`), then SIGTERM, then SIGKILL its whole group."""
        proc = self.proc
        if proc.returncode is None and not kill and proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.write(b'{"id": 0, "method": "shutdown"}\n')
                await proc.stdin.drain()
                proc.stdin.close()
            await wait_exit(proc, grace_s)
        if proc.returncode is None:
            signal_group(proc.pid, signal.SIGTERM)
            await wait_exit(proc, grace_s)
        if proc.returncode is None:
            signal_group(proc.pid, signal.SIGKILL)
            await wait_exit(proc, 5.0)
        signal_group(proc.pid, signal.SIGKILL)  # anything the engine left in the group
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._stderr, 2.0)
        log.info(
            "worker stopped: pid=%d reason=%s code=%s jobs=%d",
            proc.pid,
            reason,
            proc.returncode,
            self.jobs,
        )


async def wait_exit(proc: asyncio.subprocess.Process, limit_s: float) -> int | None:
    """The exit code, waiting at most `limit_s` (None if it still runs)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            await proc.wait()
    return proc.returncode


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _forward_stderr(proc: asyncio.subprocess.Process) -> None:
    """Send the worker's stderr to our log, a line at a time."""
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        log.info("worker %d: %s", proc.pid, line.decode(errors="replace").rstrip())
