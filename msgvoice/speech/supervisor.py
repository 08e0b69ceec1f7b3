"""The worker supervisor: the policy around the worker process (see worker_process.py).

One job at a time. A job that times out, crashes the worker or crosses the hard memory ceiling
gets the worker replaced (SIGTERM → grace → SIGKILL of its process group) and one retry. A
worker over its memory limit or job budget is recycled in the background once its job is
delivered. Failed starts back off (doubling); `max_start_failures` in a row (or one, when the
engine cannot load here) mark the worker failed: jobs fail fast until a start succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from msgvoice.config import WorkerConfig
from msgvoice.net import Backoff
from msgvoice.speech.synthesis import Output, Synthesis, SynthRequest
from msgvoice.speech.worker_process import (
    StartFailed,
    WorkerError,
    WorkerLost,
    WorkerProcess,
    WorkerUnavailable,
    worker_command,
)
from msgvoice.worker.protocol import Samples, from_raw

log = logging.getLogger(__name__)

REASONS = ("rss", "hard_rss", "timeout", "crash", "jobs")
__all__ = ["REASONS", "Supervisor", "SynthRequest", "Synthesis", "WorkerError", "WorkerUnavailable"]


class Supervisor:
    """Owns the worker (one at a time) and its restarts. Use with `async with`."""

    def __init__(
        self, config: WorkerConfig, engine: str, engine_options: Mapping[str, Any]
    ) -> None:
        self.config = config
        self.engine = engine
        self.engine_options = dict(engine_options)
        self.restarts = dict.fromkeys(REASONS, 0)
        self.jobs_done = 0
        self.last_error = ""
        self.starts = Backoff(config.backoff_initial_s, config.backoff_max_s)
        """Failed starts in a row, and when the next start may be tried."""
        self.state = "stopped"
        self.engine_facts: dict[str, Any] = {}
        """What the engine said about itself when its worker last became ready."""
        self._worker: WorkerProcess | None = None
        self._lock = asyncio.Lock()
        self._recycle_task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Future[Synthesis]] = set()

    async def __aenter__(self) -> Supervisor:
        if self.config.eager:
            async with self._lock:
                with contextlib.suppress(WorkerUnavailable):
                    await self._ensure_started()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for task in list(self._in_flight):  # stopping: nobody waits for these any more
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._recycle_task is not None:
            self._recycle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recycle_task
        await self._stop("shutdown")
        self.state = "stopped"

    # -- facts -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running worker's pid."""
        return self._worker.pid if self._worker else None

    def rss_mb(self) -> float:
        """Memory of the worker and its children now (physical footprint on macOS)."""
        return self._worker.memory_mb() if self._worker else 0.0

    def facts(self) -> dict[str, Any]:
        """Live worker facts, in doctor's shape."""
        return {
            "state": self.state,
            "pid": self.pid,
            "engine": self.engine,
            "rss_mb": round(self.rss_mb(), 1),
            "jobs_done": self.jobs_done,
            "restarts": dict(self.restarts),
            "start_failures": self.starts.failures,
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
        """Speak one request; retried once on a new worker if the first one is lost. A caller
        that goes away (a client that hung up) does not cost the worker: the segment it asked
        for is finished within its timeout and dropped, and the worker takes the next job."""
        task = asyncio.ensure_future(self._synthesize(request))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(_unwanted)
                log.info("job %s: its caller went away; the segment is finished and dropped",
                         request.job_id)  # fmt: skip
            raise

    async def _synthesize(self, request: SynthRequest) -> Synthesis:
        timeout = self.job_timeout_s(request)
        started = time.monotonic()
        async with self._lock:
            for attempt in (1, 2):
                worker = await self._ensure_started()
                try:
                    result = await self._run(worker, request, timeout)
                except WorkerLost as lost:
                    self._note_loss(lost, request)
                    await self._stop(lost.reason, kill=True)
                    if attempt == 2:
                        raise WorkerError(
                            f"synthesis failed twice ({lost.reason}: {lost}); giving up"
                        ) from None
                    continue
                samples, output, memory_mb = await asyncio.to_thread(self._collect, worker, result)
                self._after_job(worker, memory_mb)
                return Synthesis(
                    samples,
                    int(result["sample_rate"]),
                    float(result["synth_s"]),
                    time.monotonic() - started,
                    attempt,
                    dict(result.get("stages") or {}),
                    result.get("unseeded_why"),
                    output,
                    spoke=bool(result.get("samples", samples.size)),
                )
        raise AssertionError("unreachable")

    async def _run(
        self, worker: WorkerProcess, request: SynthRequest, limit_s: float
    ) -> dict[str, Any]:
        self.state = "busy"
        try:
            return await worker.call(
                "synthesize",
                dict(request.params()),
                limit_s,
                self.config.rss_poll_s,
                self.config.rss_hard_limit_mb,
            )
        finally:
            if self.state == "busy":
                self.state = "ready"

    def _note_loss(self, lost: WorkerLost, request: SynthRequest) -> None:
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

    def _collect(
        self, worker: WorkerProcess, result: dict[str, Any]
    ) -> tuple[Samples, Output | None, float]:
        """(In a thread.) The worker's samples or finished output, and the worker's memory
        now (0 when there is no limit to hold it to)."""
        output, limit = Output.of(result), self.config.rss_limit_mb
        raw = b"" if output else result["payload"]
        samples = from_raw(raw, result.get("sample_format", "f32"))
        return samples, output, worker.memory_mb(limit) if limit else 0.0

    def _after_job(self, worker: WorkerProcess, memory_mb: float) -> None:
        worker.jobs += 1
        self.jobs_done += 1
        reason = ""
        limit = self.config.rss_limit_mb
        if limit and memory_mb > limit:
            reason = "rss"
            log.info(
                "worker over its memory limit: pid=%d rss_mb=%.0f limit_mb=%d",
                worker.pid,
                memory_mb,
                limit,
            )
        elif worker.job_limit and worker.jobs >= worker.job_limit:
            reason = "jobs"
        if reason:
            self.restarts[reason] += 1
            worker.retire = reason
            self._recycle_task = asyncio.create_task(self._recycle(worker))

    async def _recycle(self, worker: WorkerProcess) -> None:
        """Replace a retiring worker soon after its last job was delivered."""
        async with self._lock:
            if self._worker is not worker:
                return
            await self._stop(worker.retire)
            if self.config.eager:
                with contextlib.suppress(WorkerUnavailable):
                    await self._ensure_started()

    # -- process lifecycle -------------------------------------------------------------------

    async def _ensure_started(self) -> WorkerProcess:
        """The running worker, started if need be; back off after failures; fail fast when
        marked failed."""
        current = self._worker
        if current is not None and current.retire:
            await self._stop(current.retire)
        elif current is not None and current.alive:
            return current
        elif current is not None:  # died between jobs
            self.restarts["crash"] += 1
            log.warning(
                "worker died between jobs: pid=%d code=%s", current.pid, current.proc.returncode
            )
            await self._stop("crash", kill=True)
        while True:
            wait = self.starts.wait_s()
            if self.state == "failed" and wait > 0:
                raise WorkerUnavailable(
                    f"TTS worker is failing to start ({self.last_error}); next try in {wait:.0f}s"
                )
            if wait > 0:
                self.state = "backoff"
                await asyncio.sleep(wait)
            try:
                return await self._spawn()
            except StartFailed as exc:
                self._start_failed(str(exc), exc.lasting)
                if self.state == "failed":
                    raise WorkerUnavailable(f"TTS worker cannot start: {exc}") from None

    def _start_failed(self, why: str, lasting: bool) -> None:
        self.last_error = f"start: {why}"
        delay = self.starts.failed()
        failed = lasting or self.starts.failures >= self.config.max_start_failures
        self.state = "failed" if failed else "backoff"
        log.error(
            "worker start failed (%d in a row, next try in %.1fs%s): %s",
            self.starts.failures,
            delay,
            ", marked failed" if failed else "",
            why,
        )

    async def _spawn(self) -> WorkerProcess:
        self.state = "starting"
        command, env = worker_command(self.config.python, self.engine, self.engine_options)
        worker = await WorkerProcess.start(command, env, self.config.ready_timeout_s)
        self._worker = worker
        self.starts.succeeded()
        self.engine_facts = dict(worker.ready.get("facts") or {})
        if self.config.max_jobs:
            worker.job_limit = self.config.max_jobs + random.randint(0, self.config.max_jobs_jitter)
        self.state = "ready"
        log.info(
            "worker ready: pid=%d engine=%s ready_s=%.2f load_s=%.2f",
            worker.pid,
            worker.ready.get("engine"),
            worker.ready_s,
            float(worker.ready.get("load_s", 0)),
        )
        return worker

    async def _stop(self, reason: str, kill: bool = False) -> None:
        """Stop the worker (if any) and everything in its process group."""
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop(reason, self.config.term_grace_s, kill=kill)


def _unwanted(task: asyncio.Future[Synthesis]) -> None:
    """Collect the outcome of a segment whose caller went away (nobody else will)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.info("an abandoned segment failed: %s", error)
