"""The synthesis lane: each chat's jobs in the order asked, different chats side by side,
latest-wins for auto replies.

`concurrency` runners take jobs: each takes the oldest queued job whose chat has none running,
so a chat's jobs never overtake each other while other chats proceed. The speaker's worker pool
bounds how many synthesise at once; one runner more than workers lets a job be encoded while
the next one is spoken.

A job's emotion is resolved while it waits for its turn (FEEL_AT_ONCE jobs at a time), and a
runner takes only jobs whose emotion is ready, so no runner sits on an LLM call while a job
that could be spoken waits behind it.

The journal decides what is stale: a queued automatic reply is superseded in the transaction
that journals its newer sibling, and a running one still finishes, but `Journal.finish` checks it
is the chat's latest before delivering, so its audio is never sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from msgvoice.chat import phrasebook
from msgvoice.chat.journal import Journal
from msgvoice.chat.port import Job
from msgvoice.chat.storage import Storage
from msgvoice.speech.speaker import (
    EmotionResult,
    Speaker,
    SpeechError,
    SpeechJob,
    WorkerError,
    exhausted,
)

log = logging.getLogger(__name__)


FEEL_AT_ONCE = 4
"""Queued jobs whose emotion is resolved at the same time."""

Listener = Callable[[Job, str], None]
"""Told of every job outcome: (job, state)."""


class Lane:
    """Runs journalled jobs through the speaker: per chat in order, chats side by side."""

    def __init__(
        self,
        journal: Journal,
        speaker: Speaker,
        audio_dir: Path,
        fmt: str,
        auto_timeout_s: float,
        *,
        concurrency: int = 1,
        storage: Storage | None = None,
    ) -> None:
        self.journal = journal
        self.speaker = speaker
        self.audio_dir = audio_dir
        self.fmt = fmt
        self.auto_timeout_s = auto_timeout_s
        self.listeners: list[Listener] = []
        self.concurrency = max(1, concurrency)
        self.storage = storage
        self.mishaps = 0
        """Jobs the lane could not finish for an unexpected reason (logged with traceback)."""
        self._parked: list[Job] = []
        self._running: dict[str, str] = {}
        """job id → chat id of the jobs being made."""
        self._queue: collections.deque[tuple[str, str]] = collections.deque()
        self._felt: dict[str, asyncio.Task[EmotionResult | None]] = {}
        """job id → its emotion being resolved (or resolved) while it waits."""
        self._feeling = asyncio.Semaphore(FEEL_AT_ONCE)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        audio_dir.mkdir(parents=True, exist_ok=True)

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the running ones)."""
        return len(self._queue) + len(self._parked)

    @property
    def running(self) -> str | None:
        """The oldest job being made, if any."""
        return next(iter(self._running), None)

    def running_jobs(self) -> list[str]:
        """Every job being made."""
        return list(self._running)

    def submit(self, job_id: str, chat_id: str) -> None:
        """Queue a journalled job; its emotion is resolved while it waits."""
        self._queue.append((job_id, chat_id))
        self._felt[job_id] = asyncio.create_task(self._feel(job_id), name=f"feel-{job_id}")

    async def _feel(self, job_id: str) -> EmotionResult | None:
        """The queued job's emotion, or None: whatever fails here fails again, and is
        handled, when the job is spoken."""
        try:
            async with self._feeling:
                job = self.journal.job(job_id)
                if job is None or job.state != "queued":
                    return None
                return await self.speaker.feel(self._speech(job))
        except Exception as exc:  # see the docstring
            log.debug("job %s: emotion left for its turn: %s", job_id, exc)
            return None
        finally:
            self._wake.set()

    def resume(self) -> int:
        """Queue the jobs a crash or restart left open; stale automatic replies are superseded.
        Returns how many were queued again."""
        resumed = 0
        for job in self.journal.open_jobs():
            if not self.journal.is_latest(job):
                self.journal.set_state(job, "superseded")
                self._tell(job, "superseded")
                continue
            self.journal.set_state(job, "queued")
            self.submit(job.id, job.chat_id)
            resumed += 1
        if resumed:
            log.info("resumed %d open jobs from the journal", resumed)
        return resumed

    async def run(self) -> None:
        """Serve the queue with `concurrency` runners until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                for n in range(self.concurrency):
                    group.create_task(self._runner(), name=f"lane-{n}")
        finally:
            for feeling in self._felt.values():
                feeling.cancel()

    async def _runner(self) -> None:
        while True:
            if self.storage is not None:
                await self.storage.room.wait()
            job = await self._next()
            self._running[job.id] = job.chat_id
            self._idle.clear()
            try:
                await self._guarded(job)
            finally:
                del self._running[job.id]
                if not self._running:
                    self._idle.set()
                self._wake.set()  # that chat's next job may go now

    async def _guarded(self, job: Job) -> None:
        """Run a job; no failure of its own (its failure notice included) ends the runner. A
        job that met a full disk waits, journalled as it was, until there is room."""
        try:
            await self._execute(job)
        except asyncio.CancelledError:
            self._parked.append(job)  # the lane is restarted or stopped: the job is not lost
            raise
        except Exception as exc:
            if self.storage is not None and exhausted(exc):
                self.storage.mark_full(f"job {job.id}: {exc}")
                self._parked.append(job)
                return
            log.exception("job %s: the lane could not finish it", job.id)
            self.mishaps += 1
            with contextlib.suppress(Exception):  # best effort: the journal itself may be failing
                self._failed(job, f"{type(exc).__name__}: {exc}")

    async def _next(self) -> Job:
        """A job parked by a full disk, else the oldest queued job whose chat has nothing
        running and whose emotion is ready (waiting for one)."""
        while True:
            self._wake.clear()
            busy = set(self._running.values())
            for parked in list(self._parked):
                if parked.chat_id not in busy:
                    self._parked.remove(parked)
                    return parked
            for entry in list(self._queue):
                job_id, chat_id = entry
                if chat_id in busy:
                    continue
                busy.add(chat_id)  # the chat's later jobs wait behind this one
                feeling = self._felt.get(job_id)
                if feeling is not None and not feeling.done():
                    continue
                self._queue.remove(entry)
                job = self.journal.job(job_id)
                if job is not None and job.state == "queued":  # not superseded while it waited
                    return job
                self._felt.pop(job_id, None)
                busy.discard(chat_id)
            await self._wake.wait()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait (bounded) for the running jobs to finish; True if none runs afterwards."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _speech(self, job: Job, emotion: EmotionResult | None = None) -> SpeechJob:
        out = self.audio_dir / f"{job.id}.{self.fmt}"
        cap = self.auto_timeout_s if job.kind == "auto" else None
        return SpeechJob(
            job.id, job.text, out, self.fmt, job.style, job.speaker, cap, emotion=emotion
        )

    async def _execute(self, job: Job) -> None:
        self.journal.set_state(job, "running")
        started = time.monotonic()
        feeling = self._felt.pop(job.id, None)
        felt = feeling.result() if feeling is not None and feeling.done() else None
        speech = self._speech(job, felt)
        out = speech.out
        try:
            result = await self.speaker.speak(speech)
        except (WorkerError, SpeechError, OSError) as exc:
            if exhausted(exc):
                raise
            self._failed(job, str(exc))
            return
        delivered = self.journal.finish(
            job,
            audio_name=out.name,
            audio_format=self.fmt,
            duration_s=result.duration_s,
            emotion=result.emotion.as_json(),
            timings=result.timings,
            engine=result.engine,
            fallback_from=result.fallback_from,
        )
        if not delivered:
            out.unlink(missing_ok=True)
        state = "done" if delivered else "superseded"
        log.info(
            "job %s %s: chat=%s kind=%s chars=%d audio_s=%.2f ms=%.0f",
            job.id,
            state,
            job.chat_id,
            job.kind,
            len(job.text),
            result.duration_s,
            (time.monotonic() - started) * 1000,
        )
        self._tell(job, state)

    def _failed(self, job: Job, reason: str) -> None:
        notice = phrasebook.text("failed", self.journal.chat(job.chat_id).lang, reason=reason[:200])
        told = self.journal.fail(job, reason, notice)
        log.warning(
            "job %s failed: chat=%s kind=%s reason=%s", job.id, job.chat_id, job.kind, reason
        )
        self._tell(job, "failed" if told else "superseded")

    def _tell(self, job: Job, state: str) -> None:
        for listener in self.listeners:
            listener(job, state)
