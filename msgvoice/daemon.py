"""The daemon's lifecycle: start its parts and tasks, wait, stop in order.

`async with Daemon(config) as daemon:` builds the parts (compose.py), starts the lane, the push
channels and (optionally) the console; leaving stops intake, lets the running job finish
(`daemon.drain_timeout_s`), cancels every task and closes every part, the worker last.
`msgvoice run` is `serve()`: the same, until SIGTERM/SIGINT or the end of console input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from msgvoice.compose import DaemonParts, daemon_parts
from msgvoice.config import Config
from msgvoice.net import next_backoff
from msgvoice.speech import process_memory

log = logging.getLogger(__name__)

HEALTHY_RUN_S = 60.0
"""A task that ran this long before failing starts its back-off afresh."""


class Daemon:
    """The running daemon. Use with `async with`; `parts` are there inside."""

    def __init__(self, config: Config, console: bool = False) -> None:
        self.config = config
        self.console = console
        self.stop = asyncio.Event()
        """Set to stop the daemon (signals, end of console input)."""
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._parts: DaemonParts | None = None

    @property
    def parts(self) -> DaemonParts:
        """The daemon's parts (only while it runs)."""
        assert self._parts is not None, "the daemon is not running"
        return self._parts

    async def __aenter__(self) -> Daemon:
        self._parts = await self._stack.enter_async_context(daemon_parts(self.config))
        try:
            self._start_tasks(self._parts)
        except BaseException:
            await self._stack.aclose()
            raise
        log.info(
            "msgvoice running: engine=%s state_dir=%s",
            self.config.tts.engine,
            self.config.state_dir,
        )
        return self

    def _start_tasks(self, parts: DaemonParts) -> None:
        def keep(name: str, run: Callable[[], Awaitable[None]]) -> None:
            self._tasks.append(asyncio.create_task(self._supervised(name, run), name=name))

        keep("lane", parts.lane.run)
        for channel in parts.channels:
            keep(type(channel).__name__, channel.run)
        keep("storage", lambda: parts.storage.watch(parts.retention.run))
        keep("retention", self._retention)
        if self.console:
            from msgvoice.channels.console import ConsoleChannel  # noqa: PLC0415

            console = ConsoleChannel(parts.router)
            self._tasks += [
                asyncio.create_task(console.run(self.stop), name="console"),
                asyncio.create_task(console.follow(), name="console-follow"),
            ]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.drain()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._stack.aclose()
            self._parts = None

    async def _supervised(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a task for the daemon's life: a failure is logged once with its traceback,
        counted, and the task restarted after a growing back-off; ending by itself is fine."""
        backoff = 0.0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await run()
                return
            except Exception:
                log.exception("task %s failed; restarting it", name)
                restarts = self.parts.task_restarts
                restarts[name] = restarts.get(name, 0) + 1
            if loop.time() - started > HEALTHY_RUN_S:
                backoff = 0.0
            backoff = next_backoff(backoff, first_s=0.5)
            await asyncio.sleep(backoff)

    async def _retention(self) -> None:
        """Retention every `retention.every_s`."""
        while True:
            self.parts.retention.run()
            await asyncio.sleep(self.config.retention.every_s)

    async def drain(self) -> None:
        """Stop intake and let the running job finish (bounded)."""
        parts = self.parts
        parts.http.accepting = False
        drained = await parts.lane.wait_idle(self.config.daemon.drain_timeout_s)
        log.info(
            "stopping: intake closed, running job %s",
            "drained" if drained else "cut at the drain timeout",
        )

    async def wait(self) -> None:
        """Wait for `stop`. A task that ends by itself (a channel that gave up, logged why)
        is let go; one that fails is a failure of the daemon."""
        stopper = asyncio.create_task(self.stop.wait())
        watched: set[asyncio.Task[Any]] = {stopper, *self._tasks}
        try:
            while stopper in watched:
                done, watched = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopper}:
                    if (error := task.exception()) is not None:
                        raise error
                    log.info("task %s ended", task.get_name())
        finally:
            stopper.cancel()


async def serve(config: Config, console: bool = False) -> int:
    """`msgvoice run`: serve until SIGTERM/SIGINT (or end of console input), then stop."""
    process_memory.tame_malloc()
    daemon = Daemon(config, console)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop.set)
    async with daemon:
        await daemon.wait()
    return 0
