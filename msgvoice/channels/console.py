"""The console channel: chat lines from stdin, replies and audio paths on stdout.

For trying msgvoice as a newcomer: `msgvoice run --console`. End of input waits (bounded) for
the jobs it asked for, then stops the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from pathlib import Path
from typing import IO

from msgvoice.router import OutboxBell, Router
from msgvoice.store import Store

CHAT_ID = "console"
BOT_PREFIX = "机器人"
FINAL_STATES = ("done", "failed", "superseded")


class ConsoleChannel:
    """One chat on the terminal."""

    def __init__(
        self,
        router: Router,
        store: Store,
        bell: OutboxBell,
        audio_dir: Path,
        *,
        stdin: IO[str] | None = None,
        stdout: IO[str] | None = None,
        finish_timeout_s: float = 600.0,
    ) -> None:
        self.router, self.store, self.bell, self.audio_dir = router, store, bell, audio_dir
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.finish_timeout_s = finish_timeout_s
        self._seq = max((r["seq"] for r in store.outbox(CHAT_ID)), default=0)
        self._jobs: list[str] = []

    def _print(self, line: str) -> None:
        self.stdout.write(line + "\n")
        self.stdout.flush()

    def _show_new(self) -> None:
        for row in self.store.outbox(CHAT_ID, self._seq):
            self._seq = row["seq"]
            if row["kind"] == "audio":
                job = self.store.job(row["job_id"]) if row["job_id"] else None
                seconds = f" ({job.duration_s:.1f}s)" if job and job.duration_s else ""
                self._print(f"{BOT_PREFIX}: [语音] {self.audio_dir / row['audio_name']}{seconds}")
            else:
                self._print(f"{BOT_PREFIX}: {row['text']}")

    def _lines(self) -> asyncio.Queue[str | None]:
        """Lines from stdin via a daemon thread (works for ttys, pipes and files alike)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def pump() -> None:
            for line in self.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=pump, name="console-stdin", daemon=True).start()
        return queue

    def _open_jobs(self) -> bool:
        states = [self.store.job(j) for j in self._jobs]
        return any(job is not None and job.state not in FINAL_STATES for job in states)

    async def run(self, stop: asyncio.Event) -> None:
        """Read lines until end of input, then wait for this chat's jobs and set `stop`."""
        changes = self.bell.subscribe()
        lines = self._lines()
        self._print("msgvoice console: 输入 /tts 你好 或 /help；Ctrl-D 退出")
        try:
            while (line := await lines.get()) is not None:
                if line.strip():
                    self._jobs += (await self.router.message(CHAT_ID, line.strip())).jobs
                self._show_new()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.finish_timeout_s):
                    while self._open_jobs():
                        await changes.get()
                        self._show_new()
            self._show_new()
        finally:
            self.bell.unsubscribe(changes)
            stop.set()

    async def follow(self) -> None:
        """Print replies as they arrive (runs beside `run`)."""
        changes = self.bell.subscribe()
        try:
            while True:
                if await changes.get() == CHAT_ID:
                    self._show_new()
        finally:
            self.bell.unsubscribe(changes)
