"""The console channel: chat lines from stdin, replies and audio paths on stdout.

For trying msgvoice as a newcomer: `msgvoice run --console`. End of input waits (bounded) for
the jobs it asked for, then stops the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from typing import IO

from msgvoice.chat.port import FINAL_STATES, ChatPort, Incoming

CHAT_ID = "console"


class ConsoleChannel:
    """One chat on the terminal."""

    def __init__(
        self,
        chat: ChatPort,
        *,
        stdin: IO[str] | None = None,
        stdout: IO[str] | None = None,
        finish_timeout_s: float = 600.0,
    ) -> None:
        self.chat = chat
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.finish_timeout_s = finish_timeout_s
        self._seq = max((item.seq for item in chat.outbox(CHAT_ID) or []), default=0)
        self._jobs: list[str] = []

    def _print(self, line: str) -> None:
        self.stdout.write(line + "\n")
        self.stdout.flush()

    def _show_new(self) -> None:
        for item in self.chat.outbox(CHAT_ID, self._seq) or []:
            self._seq = item.seq
            if item.audio is not None:
                seconds = f" ({item.duration_s:.1f}s)" if item.duration_s else ""
                line = self.chat.phrase(
                    CHAT_ID, "console_voice", path=str(item.audio), seconds=seconds
                )
            else:
                line = self.chat.phrase(CHAT_ID, "console_text", text=item.text or "")
            self._print(line)

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
        jobs = [self.chat.job(j) for j in self._jobs]
        return any(job is not None and job.state not in FINAL_STATES for job in jobs)

    async def run(self, stop: asyncio.Event) -> None:
        """Read lines until end of input, then wait for this chat's jobs and set `stop`."""
        lines = self._lines()
        self._print(self.chat.phrase(CHAT_ID, "console_banner"))
        try:
            with self.chat.bell.listening() as changes:
                while (line := await lines.get()) is not None:
                    if line.strip():
                        outcome = await self.chat.message(Incoming(CHAT_ID, line.strip()))
                        self._jobs += outcome.jobs
                    self._show_new()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.finish_timeout_s):
                        while self._open_jobs():
                            await changes.get()
                            self._show_new()
            self._show_new()
        finally:
            stop.set()

    async def follow(self) -> None:
        """Print replies as they arrive (runs beside `run`)."""
        with self.chat.bell.listening() as changes:
            while True:
                if await changes.get() == CHAT_ID:
                    self._show_new()
