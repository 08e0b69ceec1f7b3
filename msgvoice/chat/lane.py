"""The synthesis lane: one job at a time, in the order asked, latest-wins for auto replies.

The journal decides what is stale: a queued automatic reply is superseded in the transaction
that journals its newer sibling, and a running one still finishes, but `Journal.finish` checks it
is the chat's latest before delivering, so its audio is never sent.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path

from msgvoice.chat import phrasebook
from msgvoice.chat.journal import Journal
from msgvoice.chat.port import Job
from msgvoice.speech.speaker import Speaker, SpeechError, SpeechJob, WorkerError

log = logging.getLogger(__name__)


Listener = Callable[[Job, str], None]
"""Told of every job outcome: (job, state)."""


class Lane:
    """Runs journalled jobs through the speaker, one at a time."""

    def __init__(
        self, journal: Journal, speaker: Speaker, audio_dir: Path, fmt: str, auto_timeout_s: float
    ) -> None:
        self.journal = journal
        self.speaker = speaker
        self.audio_dir = audio_dir
        self.fmt = fmt
        self.auto_timeout_s = auto_timeout_s
        self.listeners: list[Listener] = []
        self.running: str | None = None
        self._queue: collections.deque[str] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        audio_dir.mkdir(parents=True, exist_ok=True)

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the running one)."""
        return len(self._queue)

    def submit(self, job_id: str) -> None:
        """Queue a journalled job."""
        self._queue.append(job_id)
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
            self.submit(job.id)
            resumed += 1
        if resumed:
            log.info("resumed %d open jobs from the journal", resumed)
        return resumed

    async def run(self) -> None:
        """Serve the queue until cancelled."""
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            job = self.journal.job(self._queue.popleft())
            if job is None or job.state != "queued":
                continue  # superseded while it waited
            self.running = job.id
            self._idle.clear()
            try:
                await self._execute(job)
            finally:
                self.running = None
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait (bounded) for the running job to finish; True if none runs afterwards."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def _execute(self, job: Job) -> None:
        self.journal.set_state(job, "running")
        out = self.audio_dir / f"{job.id}.{self.fmt}"
        started = time.monotonic()
        cap = self.auto_timeout_s if job.kind == "auto" else None
        speech = SpeechJob(
            job.id, job.text, out, self.fmt, style=job.style, voice=job.speaker, timeout_cap_s=cap
        )
        try:
            result = await self.speaker.speak(speech)
        except (WorkerError, SpeechError, OSError) as exc:
            self._failed(job, str(exc))
            return
        except Exception as exc:  # the lane must outlive any one job
            log.exception("job %s failed unexpectedly", job.id)
            self._failed(job, f"{type(exc).__name__}: {exc}")
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
