"""The daemon's composition and lifecycle: journal, lane, router, channels, HTTP, shutdown.

`msgvoice run` is `serve()`: SIGTERM/SIGINT stop intake, the running job may finish
(`daemon.drain_timeout_s`), then every task is cancelled and every part closed, the worker last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msgvoice import doctor
from msgvoice.app import App, build, engine_options
from msgvoice.channels.console import ConsoleChannel
from msgvoice.channels.http import HttpChannel
from msgvoice.channels.imessage import ImessageChannel
from msgvoice.channels.speech_api import SpeechApi
from msgvoice.channels.telegram import TelegramChannel
from msgvoice.config import Config
from msgvoice.lanes import Lane
from msgvoice.metrics import Metrics
from msgvoice.responder import Responder
from msgvoice.router import OutboxBell, Router
from msgvoice.store import Store
from msgvoice.supervisor import Supervisor

log = logging.getLogger(__name__)


def voices(config: Config, supervisor: Supervisor) -> list[str]:
    """Voice names the main engine offers (from its own facts, or the voices folder)."""
    listed = supervisor.engine_facts.get("voices")
    if isinstance(listed, list):
        return [str(v) for v in listed]
    folder = Path(config.indextts.voices_dir).expanduser() if config.indextts.voices_dir else None
    names = sorted({p.stem for p in folder.iterdir()}) if folder and folder.is_dir() else []
    return [config.tts.voice, *names]


@dataclass
class Daemon:
    """The running daemon's parts (what tests and channels reach)."""

    app: App
    store: Store
    lane: Lane
    router: Router
    bell: OutboxBell
    http: HttpChannel
    metrics: Metrics
    channels: list[Any]
    """Push channels (Telegram, iMessage): each has `async run()`."""


@contextlib.asynccontextmanager
async def daemon(config: Config) -> AsyncIterator[Daemon]:
    """Build the daemon: journal, worker, lane, router, HTTP channel; resume open jobs."""
    async with contextlib.AsyncExitStack() as stack:
        store = Store(doctor.state_path(config))
        stack.callback(store.close)
        built = await stack.enter_async_context(build(config))
        audio_dir = config.state_dir / "audio"
        lane = Lane(
            store, built.speaker, audio_dir, config.tts.format, config.auto.timeout_ms / 1000
        )
        bell = OutboxBell()
        responder = Responder(config.responder, built.client) if config.responder.base_url else None
        router = Router(
            config,
            store,
            lane,
            bell,
            engine=built.speaker.active_engine,
            answer=responder.answer if responder else None,
        )
        metrics = Metrics(
            store,
            built.supervisor,
            lambda: lane.depth,
            lambda: dict(built.analyser.calls) if built.analyser else {},
            lambda: router.superseded_at_submit,
        )
        lane.listeners += [metrics.on_job, lambda job, _state: bell.ring(job.chat_id)]

        async def doctor_report() -> dict[str, Any]:
            return await doctor.report(config, engine_options(config), built.supervisor.facts)

        def health() -> dict[str, Any]:
            return {
                "status": "ok",
                "queue": lane.depth,
                "running": lane.running,
                "jobs": store.counts(),
                "worker": built.supervisor.facts(),
            }

        speech = SpeechApi(config, built.speaker, lane, lambda: voices(config, built.supervisor))
        http = HttpChannel(
            config,
            router,
            store,
            doctor=doctor_report,
            health=health,
            metrics=metrics.render,
            extra_routes=speech.routes(),
        )
        channels: list[Any] = []
        if config.telegram.enabled:
            channels.append(
                TelegramChannel(
                    config.telegram, router, store, bell, client=built.client, audio_dir=audio_dir
                )
            )
        if config.imessage.enabled:
            channels.append(ImessageChannel(config.imessage, router, store, bell, audio_dir))
        part = Daemon(built, store, lane, router, bell, http, metrics, channels)
        await part.http.start()
        stack.push_async_callback(part.http.stop)
        lane.resume()
        yield part


async def serve(config: Config, console: bool = False) -> int:
    """`msgvoice run`: serve until SIGTERM/SIGINT (or end of console input), then stop intake,
    drain the running job (bounded), cancel and close."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with daemon(config) as part:
        log.info("msgvoice running: engine=%s state_dir=%s", config.tts.engine, config.state_dir)
        tasks = [asyncio.create_task(part.lane.run(), name="lane")]
        tasks += [asyncio.create_task(ch.run(), name=type(ch).__name__) for ch in part.channels]
        if console:
            channel = ConsoleChannel(part.router, part.store, part.bell, config.state_dir / "audio")
            tasks += [
                asyncio.create_task(channel.run(stop), name="console"),
                asyncio.create_task(channel.follow(), name="console-follow"),
            ]
        try:
            await _until(stop, tasks)
        finally:
            part.http.accepting = False
            drained = await part.lane.wait_idle(config.daemon.drain_timeout_s)
            log.info(
                "stopping: intake closed, running job %s",
                "drained" if drained else "cut at the drain timeout",
            )
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return 0


async def _until(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Wait for `stop`; a task that dies early is a failure of the daemon."""
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    for task in done - {stopper}:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
