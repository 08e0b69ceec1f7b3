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
import resource
import signal
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from msgvoice.chat.port import keep_running
from msgvoice.compose import DaemonParts, daemon_parts
from msgvoice.config import OPEN_FILES, Config
from msgvoice.speech import process_memory

log = logging.getLogger(__name__)

ACCEPT_EPISODE_S = 60.0
"""Accept failures closer together than this are one episode (logged once)."""


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
            "msgvoice running: engine=%s state_dir=%s open_files=%d http_connections=%d",
            self.config.tts.engine,
            self.config.state_dir,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            self._parts.http.guard.cap,
        )
        return self

    def _start_tasks(self, parts: DaemonParts) -> None:
        def keep(name: str, run: Callable[[], Awaitable[None]]) -> None:
            task = keep_running(name, run, parts.task_restarts)
            self._tasks.append(asyncio.create_task(task, name=name))

        keep("lane", parts.lane.run)
        for channel in parts.channels:
            keep(type(channel).__name__, channel.run)
        keep("storage", lambda: parts.storage.watch(parts.retention.run))
        keep("retention", self._retention)
        if parts.router.conversations is not None:
            keep("conversations", parts.router.conversations.run)
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


def raise_open_file_limit(wanted: int = OPEN_FILES) -> None:
    """Raise the soft open-file limit to min(hard limit, `wanted`) (launchd gives an agent
    256); the daemon's start line says what is in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """An accept that fails for lack of files is logged once per episode (a minute without
    one ends it), not once per try: asyncio retries every second and says so each time."""
    last = [-1e9]

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "out of system resource" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        now = loop.time()
        if now - last[0] > ACCEPT_EPISODE_S:
            log.error("http: cannot accept connections: %s", context.get("exception"))
        last[0] = now

    loop.set_exception_handler(handler)


async def serve(config: Config, console: bool = False) -> int:
    """`msgvoice run`: serve until SIGTERM/SIGINT (or end of console input), then stop."""
    process_memory.tame_malloc()
    raise_open_file_limit()
    quiet_accept_errors(asyncio.get_running_loop())
    daemon = Daemon(config, console)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop.set)
    async with daemon:
        await daemon.wait()
    return 0
