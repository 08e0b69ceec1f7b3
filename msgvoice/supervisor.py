"""The worker supervisor: owns the worker process, its restarts and every wait on it.

One job at a time. A job that times out, crashes the worker or crosses the hard memory ceiling
gets the worker replaced (SIGTERM → grace → SIGKILL of its process group) and one retry. After a
job, a worker over its memory limit or job budget is recycled in the background, after that job
is delivered. Failed starts back off (doubling) and, after `max_start_failures` in a row, mark
the worker failed: jobs then fail fast until a later attempt succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from msgvoice.audio import read_raw
from msgvoice.config import WorkerConfig
from msgvoice.engines.base import Prosody
from msgvoice.memory import process_tree_mb
from msgvoice.samples import Samples

log = logging.getLogger(__name__)

REASONS = ("rss", "hard_rss", "timeout", "crash", "jobs")
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class WorkerError(RuntimeError):
    """A job the worker could not complete; the message is fit for a user or a log."""


class WorkerUnavailable(WorkerError):
    """The worker cannot be started right now (failed starts, backing off)."""


class _WorkerLost(Exception):
    """The worker died or was killed during a job; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _StartFailed(Exception):
    """The worker did not reach ready."""


@dataclass(frozen=True)
class SynthRequest:
    """One piece of text for the worker to speak."""

    job_id: str
    text: str
    voice: str | None = None
    prosody: Prosody = field(default_factory=Prosody)
    emotion: tuple[float, ...] | None = None
    timeout_cap_s: float | None = None
    """Upper bound on this request's timeout (automatic replies)."""
    seed: int | None = None
    """Seed for sampling engines, so the same request gives the same audio."""


@dataclass(frozen=True)
class Synthesis:
    """The worker's answer: samples and how long it took."""

    samples: Samples
    sample_rate: int
    synth_s: float
    wall_s: float
    attempts: int
    stages: dict[str, float] = field(default_factory=dict)
    """Per-stage milliseconds the engine reported (IndexTTS2: gpt_ms, s2mel_ms, vocoder_ms)."""
    unseeded_why: str | None = None
    """Why a requested seed could not be applied (the engine takes none)."""


@dataclass
class _Worker:
    proc: asyncio.subprocess.Process
    engine: str
    jobs: int = 0
    job_limit: int = 0
    ready_s: float = 0.0
    retire: str = ""
    """Set when the worker is to be recycled (the reason); it takes no further job."""
    stderr_task: asyncio.Task[None] | None = None


class Supervisor:
    """Owns one worker process. Use with `async with`."""

    def __init__(
        self,
        config: WorkerConfig,
        engine: str,
        engine_options: Mapping[str, Any],
        scratch_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.engine_options = dict(engine_options)
        self.restarts = dict.fromkeys(REASONS, 0)
        self.jobs_done = 0
        self.last_error = ""
        self.start_failures = 0
        self.state = "stopped"
        self.engine_facts: dict[str, Any] = {}
        """What the engine said about itself when its worker last became ready."""
        self._worker: _Worker | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._next_start_at = 0.0
        self._recycle_task: asyncio.Task[None] | None = None
        self._scratch_parent = scratch_dir
        self._scratch = Path()

    async def __aenter__(self) -> Supervisor:
        self._scratch = Path(tempfile.mkdtemp(prefix="msgvoice-worker-", dir=self._scratch_parent))
        if self.config.eager:
            async with self._lock:
                with contextlib.suppress(WorkerUnavailable):
                    await self._ensure_started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._recycle_task is not None:
            self._recycle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recycle_task
        await self._stop("shutdown")
        self.state = "stopped"
        shutil.rmtree(self._scratch, ignore_errors=True)

    # -- facts -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running worker's pid."""
        return self._worker.proc.pid if self._worker else None

    def rss_mb(self) -> float:
        """Memory of the worker and its children now (physical footprint on macOS)."""
        return process_tree_mb(self.pid) if self.pid else 0.0

    def facts(self) -> dict[str, Any]:
        """Live worker facts, in doctor's shape."""
        return {
            "state": self.state,
            "pid": self.pid,
            "engine": self.engine,
            "rss_mb": round(self.rss_mb(), 1),
            "jobs_done": self.jobs_done,
            "restarts": dict(self.restarts),
            "start_failures": self.start_failures,
            "last_error": self.last_error,
        }

    def job_timeout_s(self, request: SynthRequest) -> float:
        """`timeout_base_s + timeout_per_char_s × chars`, capped for automatic replies."""
        timeout = self.config.timeout_base_s + self.config.timeout_per_char_s * len(request.text)
        if request.timeout_cap_s is not None:
            timeout = min(timeout, request.timeout_cap_s)
        return timeout

    # -- jobs --------------------------------------------------------------------------------

    async def synthesize(self, request: SynthRequest) -> Synthesis:
        """Speak one request; retried once on a new worker if the first one is lost."""
        timeout = self.job_timeout_s(request)
        started = time.monotonic()
        async with self._lock:
            for attempt in (1, 2):
                await self._ensure_started()
                try:
                    result = await self._run(request, timeout)
                except _WorkerLost as lost:
                    self._note_loss(lost, request)
                    await self._stop(lost.reason, kill=True)
                    if attempt == 2:
                        raise WorkerError(
                            f"synthesis failed twice ({lost.reason}: {lost}); giving up"
                        ) from None
                    continue
                self._after_job()
                samples = await asyncio.to_thread(_take_raw, Path(result["out"]))
                return Synthesis(
                    samples,
                    int(result["sample_rate"]),
                    float(result["synth_s"]),
                    time.monotonic() - started,
                    attempt,
                    dict(result.get("stages") or {}),
                    result.get("unseeded_why"),
                )
        raise AssertionError("unreachable")

    def _note_loss(self, lost: _WorkerLost, request: SynthRequest) -> None:
        self.restarts[lost.reason] += 1
        self.last_error = f"{lost.reason}: {lost}"
        log.warning(
            "worker lost: reason=%s pid=%s rss_mb=%.0f job=%s detail=%s",
            lost.reason,
            self.pid,
            self.rss_mb(),
            request.job_id,
            lost,
        )

    async def _run(self, request: SynthRequest, limit_s: float) -> dict[str, Any]:
        worker = self._worker
        assert worker is not None
        out = self._scratch / f"{request.job_id}-{next(self._ids)}.f32"
        params = {
            "text": request.text,
            "voice": request.voice,
            "prosody": asdict(request.prosody),
            "emotion": list(request.emotion) if request.emotion else None,
            "seed": request.seed,
            "out": str(out),
        }
        self.state = "busy"
        try:
            result = await self._call(worker, "synthesize", params, limit_s)
        except asyncio.CancelledError:
            # Its answer would be read as the next job's: this worker takes no further job.
            worker.retire = worker.retire or "cancelled"
            _signal_group(worker.proc.pid, signal.SIGKILL)
            raise
        finally:
            if self.state == "busy":
                self.state = "ready"
        result["out"] = str(out)
        return result

    async def _call(
        self, worker: _Worker, method: str, params: dict[str, Any], limit_s: float
    ) -> dict[str, Any]:
        """Send one request and wait for its answer, watching the hard memory ceiling."""
        req_id = next(self._ids)
        line = json.dumps({"id": req_id, "method": method, "params": params}, ensure_ascii=False)
        assert worker.proc.stdin is not None
        try:
            worker.proc.stdin.write(line.encode() + b"\n")
            await worker.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _WorkerLost("crash", f"worker stdin closed: {exc}") from None
        reply = asyncio.ensure_future(self._read(worker))
        deadline = time.monotonic() + limit_s
        hard = self.config.rss_hard_limit_mb
        try:
            while not reply.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _WorkerLost("timeout", f"no answer within {limit_s:.1f}s")
                await asyncio.wait({reply}, timeout=min(left, self.config.rss_poll_s))
                if not reply.done() and hard and (rss := self.rss_mb()) > hard:
                    raise _WorkerLost("hard_rss", f"{rss:.0f} MB over the {hard} MB ceiling")
            message = reply.result()
        finally:
            reply.cancel()
        if message.get("id") != req_id:
            raise _WorkerLost("crash", f"answer to request {message.get('id')}, not {req_id}")
        if not message.get("ok"):
            error = message.get("error") or {}
            raise WorkerError(f"{error.get('type', 'Error')}: {error.get('message', '')}")
        result: dict[str, Any] = message.get("result") or {}
        return result

    async def _read(self, worker: _Worker) -> dict[str, Any]:
        """One protocol message; EOF and garbage are crashes."""
        assert worker.proc.stdout is not None
        raw = await worker.proc.stdout.readline()
        if not raw:
            code = await _wait_exit(worker.proc, 2.0)
            raise _WorkerLost("crash", f"worker exited with code {code}")
        try:
            message = json.loads(raw)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError:
            raise _WorkerLost("crash", f"garbage on the protocol: {raw[:80]!r}") from None
        return message

    def _after_job(self) -> None:
        worker = self._worker
        assert worker is not None
        worker.jobs += 1
        self.jobs_done += 1
        reason = ""
        limit = self.config.rss_limit_mb
        if limit and (rss := self.rss_mb()) > limit:
            reason = "rss"
            log.info(
                "worker over its memory limit: pid=%d rss_mb=%.0f limit_mb=%d",
                worker.proc.pid,
                rss,
                limit,
            )
        elif worker.job_limit and worker.jobs >= worker.job_limit:
            reason = "jobs"
        if reason:
            self.restarts[reason] += 1
            worker.retire = reason
            self._recycle_task = asyncio.create_task(self._recycle(worker))

    async def _recycle(self, worker: _Worker) -> None:
        """Replace a retiring worker soon after its last job was delivered."""
        async with self._lock:
            if self._worker is not worker:
                return
            await self._stop(worker.retire)
            if self.config.eager:
                with contextlib.suppress(WorkerUnavailable):
                    await self._ensure_started()

    # -- process lifecycle -------------------------------------------------------------------

    async def _ensure_started(self) -> None:
        """Start the worker unless it runs; back off after failures; fail fast when failed."""
        if self._worker is not None and self._worker.retire:
            await self._stop(self._worker.retire)
        if self._worker is not None and self._worker.proc.returncode is None:
            return
        if self._worker is not None:  # died between jobs
            self.restarts["crash"] += 1
            log.warning(
                "worker died between jobs: pid=%d code=%s",
                self._worker.proc.pid,
                self._worker.proc.returncode,
            )
            await self._stop("crash", kill=True)
        while True:
            wait = self._next_start_at - time.monotonic()
            if self.state == "failed" and wait > 0:
                raise WorkerUnavailable(
                    f"TTS worker is failing to start ({self.last_error}); next try in {wait:.0f}s"
                )
            if wait > 0:
                self.state = "backoff"
                await asyncio.sleep(wait)
            try:
                await self._spawn()
            except _StartFailed as exc:
                self._start_failed(str(exc))
                if self.state == "failed":
                    raise WorkerUnavailable(f"TTS worker cannot start: {exc}") from None
                continue
            self.start_failures = 0
            return

    def _start_failed(self, why: str) -> None:
        self.start_failures += 1
        self.last_error = f"start: {why}"
        delay = min(
            self.config.backoff_initial_s * 2 ** (self.start_failures - 1),
            self.config.backoff_max_s,
        )
        self._next_start_at = time.monotonic() + delay
        failed = self.start_failures >= self.config.max_start_failures
        self.state = "failed" if failed else "backoff"
        log.error(
            "worker start failed (%d in a row, next try in %.1fs%s): %s",
            self.start_failures,
            delay,
            ", marked failed" if failed else "",
            why,
        )

    def _command(self) -> list[str]:
        python = self.config.python or sys.executable
        return [
            python,
            "-u",
            "-m",
            "msgvoice.worker",
            "--engine",
            self.engine,
            "--options",
            json.dumps(self.engine_options),
        ]

    async def _spawn(self) -> None:
        self.state = "starting"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p
        )
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            raise _StartFailed(f"cannot run {self._command()[0]}: {exc}") from None
        worker = _Worker(proc, self.engine)
        worker.stderr_task = asyncio.create_task(_forward_stderr(proc))
        self._worker = worker
        try:
            async with asyncio.timeout(self.config.ready_timeout_s):
                message = await self._read(worker)
        except (TimeoutError, _WorkerLost) as exc:
            why = (
                f"not ready within {self.config.ready_timeout_s:.0f}s"
                if isinstance(exc, TimeoutError)
                else str(exc)
            )
            await self._stop("start", kill=True)
            raise _StartFailed(why) from None
        if message.get("event") != "ready":
            await self._stop("start", kill=True)
            raise _StartFailed(str(message.get("error") or message)[:500])
        worker.ready_s = time.monotonic() - started
        self.engine_facts = dict(message.get("facts") or {})
        if self.config.max_jobs:
            worker.job_limit = self.config.max_jobs + random.randint(0, self.config.max_jobs_jitter)
        self.state = "ready"
        log.info(
            "worker ready: pid=%d engine=%s ready_s=%.2f load_s=%.2f",
            proc.pid,
            message.get("engine"),
            worker.ready_s,
            float(message.get("load_s", 0)),
        )

    async def _stop(self, reason: str, kill: bool = False) -> None:
        """Stop the worker and everything in its process group; bounded at every step."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        proc, grace = worker.proc, self.config.term_grace_s
        if proc.returncode is None and not kill and proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.write(b'{"id": 0, "method": "shutdown"}\n')
                await proc.stdin.drain()
                proc.stdin.close()
            await _wait_exit(proc, grace)
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            await _wait_exit(proc, grace)
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGKILL)
            await _wait_exit(proc, 5.0)
        _signal_group(proc.pid, signal.SIGKILL)  # anything the engine left in the group
        if worker.stderr_task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(worker.stderr_task, 2.0)
        log.info(
            "worker stopped: pid=%d reason=%s code=%s jobs=%d",
            proc.pid,
            reason,
            proc.returncode,
            worker.jobs,
        )


def _take_raw(path: Path) -> Samples:
    """Read the worker's output file and remove it."""
    samples = read_raw(path)
    path.unlink(missing_ok=True)
    return samples


async def _wait_exit(proc: asyncio.subprocess.Process, limit_s: float) -> int | None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            await proc.wait()
    return proc.returncode


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _forward_stderr(proc: asyncio.subprocess.Process) -> None:
    """Send the worker's stderr to our log, a line at a time."""
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        log.info("worker %d: %s", proc.pid, line.decode(errors="replace").rstrip())
