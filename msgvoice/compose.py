"""The composition root: every component is built here and handed its own config section and
collaborators. `speech_kit` is what `msgvoice say` needs; `daemon_parts` adds the journal, lane,
router, channels and metrics for `msgvoice run` (see daemon.py for their lifecycle)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from msgvoice.channels.push import Channel, push_channels
from msgvoice.config import Config, StatePaths, TtsConfig, WorkerConfig
from msgvoice.net import tls
from msgvoice.speech.chain import EngineChain, WorkerPool
from msgvoice.speech.emotion import Emotions
from msgvoice.speech.emotion_llm import Analyser
from msgvoice.speech.speaker import Speaker
from msgvoice.speech.supervisor import Supervisor
from msgvoice.worker.protocol import ENGINES

if TYPE_CHECKING:  # the daemon's parts: imported only when a daemon is built
    from msgvoice.channels.http import HttpChannel
    from msgvoice.chat.journal import Journal
    from msgvoice.chat.lane import Lane
    from msgvoice.chat.retention import Retention
    from msgvoice.chat.router import Router
    from msgvoice.chat.storage import Storage
    from msgvoice.ops.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class SpeechKit:
    """Everything a message needs on its way to audio."""

    config: Config
    speaker: Speaker
    analyser: Analyser | None
    client: httpx.AsyncClient

    @property
    def supervisor(self) -> Supervisor:
        """The main engine's first supervisor."""
        return self.speaker.chain.main

    @property
    def workers(self) -> list[Supervisor]:
        """The main engine's supervisors."""
        return self.speaker.chain.workers


def worker_count(config: Config) -> int:
    """`worker.count`, or on auto: for light engines one per core (at most 2), else 1. A
    light engine's one-segment job is encoded in its worker, so a second worker takes a
    second core (scripts/bench --only parallel on 2 cores, 16 chats: 21.3 jobs/s with two
    workers against 12.3 with one, and 15.9 for one worker before the worker encoded)."""
    if config.worker.count:
        return config.worker.count
    spec = ENGINES.get(config.tts.engine)
    return max(1, min(2, os.cpu_count() or 1)) if spec is not None and spec.light else 1


def main_voice(config: Config) -> str:
    """The main engine's voice: tts.voice once it is set, until then the engine's own."""
    spec = ENGINES.get(config.tts.engine)
    if spec is None or "tts.voice" in config.sources or config.tts.voice != TtsConfig().voice:
        return config.tts.voice
    return spec.default_voice or config.tts.voice


def engine_options(config: Config, engine: str | None = None) -> dict[str, Any]:
    """The options an engine's worker constructs it with (the main engine by default)."""
    engine = engine or config.tts.engine
    spec = ENGINES.get(engine)
    if spec is None:
        return {}
    options: dict[str, Any] = {}
    if spec.section:
        options |= dataclasses.asdict(getattr(config, spec.section))
    if spec.default_voice:
        options["voice"] = main_voice(config) if engine == config.tts.engine else spec.default_voice
    if spec.cache:
        options["cache_dir"] = str(config.paths.refs)
    return options


@contextlib.asynccontextmanager
async def speech_kit(config: Config, workers: int = 1) -> AsyncIterator[SpeechKit]:
    """Start `workers` workers of the main engine and the shared HTTP client; stop everything
    on exit."""
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(verify=tls()))
        analyser = Analyser(config.emotion, client) if config.emotion.llm_base_url else None
        if analyser is not None:
            stack.push_async_callback(analyser.close)
        emotions = Emotions(config.emotion, analyser.analyse if analyser else None)

        async def supervisor(worker: WorkerConfig, engine: str) -> Supervisor:
            options = engine_options(config, engine)
            return await stack.enter_async_context(Supervisor(worker, engine, options))

        main = [await supervisor(config.worker, config.tts.engine) for _ in range(workers)]
        lazy = dataclasses.replace(config.worker, eager=False)  # fallbacks start when needed
        fallbacks = [
            WorkerPool([await supervisor(lazy, name)])
            for name in config.tts.fallback
            if name != config.tts.engine
        ]
        chain = EngineChain([WorkerPool(main), *fallbacks], main_voice(config))
        yield SpeechKit(config, Speaker(config, chain, emotions), analyser, client)


@dataclass
class DaemonParts:
    """The daemon's parts (what daemon.py runs and tests reach)."""

    kit: SpeechKit
    journal: Journal
    lane: Lane
    router: Router
    http: HttpChannel
    metrics: Metrics
    channels: list[Channel]
    storage: Storage
    retention: Retention
    task_restarts: dict[str, int] = field(default_factory=dict)
    """Daemon tasks restarted after a failure, by task name."""


@contextlib.asynccontextmanager
async def daemon_parts(config: Config) -> AsyncIterator[DaemonParts]:
    """Build the daemon: journal, worker, lane, router, channels; the HTTP channel is listening
    and open jobs are queued again when this yields."""
    # The daemon's modules (aiohttp, prometheus) are loaded here, not for `say`.
    from msgvoice.chat.journal import Journal  # noqa: PLC0415
    from msgvoice.chat.port import Bell  # noqa: PLC0415
    from msgvoice.chat.retention import Retention  # noqa: PLC0415
    from msgvoice.chat.storage import Storage, keep_private  # noqa: PLC0415
    from msgvoice.ops.metrics import Live, Metrics  # noqa: PLC0415

    paths = config.paths
    keep_private(paths.root)
    sweep_leftovers(paths)
    async with contextlib.AsyncExitStack() as stack:
        journal = Journal(paths.journal, Bell(), paths.audio)
        stack.callback(journal.close)
        workers = worker_count(config)
        kit = await stack.enter_async_context(speech_kit(config, workers))
        if kit.analyser is not None:
            kit.analyser.start_warming()  # LM Studio loads the model now, not at the first reply
        storage = Storage(config.state_dir, config.retention.min_free_mb)
        lane, router = _chat(config, journal, kit, storage, workers)
        task_restarts: dict[str, int] = {}
        metrics = Metrics(
            journal,
            Live(
                workers=kit.workers,
                depth=lambda: lane.depth,
                llm=lambda: kit.analyser.facts() if kit.analyser else None,
                superseded=lambda: router.superseded_at_submit,
                refused=lambda: router.refused,
                task_restarts=lambda: dict(task_restarts),
            ),
        )
        lane.listeners.append(metrics.on_job)
        http = _http(config, kit, lane, router, metrics)
        channels = push_channels(config, router, kit.client)
        prefixes = [channel.prefix for channel in channels]
        retention = Retention(config.retention, journal, paths.audio, prefixes)
        parts = DaemonParts(
            kit, journal, lane, router, http, metrics, channels, storage, retention, task_restarts
        )
        await parts.http.start()
        stack.push_async_callback(parts.http.stop)
        lane.resume()
        yield parts


def sweep_leftovers(paths: StatePaths) -> None:
    """Remove what a killed daemon left half made: voice notes it was writing (`.*.part`) and
    the scratch folders of older versions' workers, so they cannot hold a small disk."""
    for leftover in [*paths.audio.glob(".*.part"), *paths.tmp.glob("msgvoice-worker-*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _chat(
    config: Config, journal: Journal, kit: SpeechKit, storage: Storage, workers: int
) -> tuple[Lane, Router]:
    """The chat wing: a lane with one runner more than workers (a job is encoded while the
    next one is spoken) and the router in front of it."""
    from msgvoice.chat.lane import Lane  # noqa: PLC0415
    from msgvoice.chat.responder import Responder  # noqa: PLC0415
    from msgvoice.chat.router import Router  # noqa: PLC0415

    speaker, paths = kit.speaker, config.paths
    lane = Lane(
        journal,
        speaker,
        paths.audio,
        config.tts.format,
        config.auto.timeout_ms / 1000,
        concurrency=workers + 1,
        storage=storage,
    )
    responder = Responder(config.responder, kit.client) if config.responder.base_url else None
    router = Router(
        config,
        journal,
        lane,
        engine=speaker.chain.active_engine,
        storage=storage,
        voices=speaker.voices,
        voice_named=speaker.voice_named,
        answer=responder.answer if responder else None,
    )
    return lane, router


def _http(
    config: Config, kit: SpeechKit, lane: Lane, router: Router, metrics: Metrics
) -> HttpChannel:
    """The HTTP channel with the speech API, health, doctor and metrics routes."""
    from msgvoice.channels.http import HttpChannel  # noqa: PLC0415
    from msgvoice.channels.speech_api import SpeechApi  # noqa: PLC0415
    from msgvoice.ops import doctor  # noqa: PLC0415

    supervisor, journal = kit.supervisor, router.journal

    async def doctor_report() -> dict[str, Any]:
        analyser = kit.analyser
        report = await doctor.report(
            config,
            engine_options(config),
            supervisor.facts,
            live_llm=analyser.facts if analyser else None,
        )
        return report | {"workers": [w.facts() for w in kit.workers]}

    def health() -> dict[str, Any]:
        full = router.storage_full()
        workers = [w.facts() for w in kit.workers]  # the first is `supervisor`
        return {
            "status": "ok" if full is None else "degraded",
            "reason": full,
            "queue": lane.depth,
            "running": lane.running,
            "running_jobs": lane.running_jobs(),
            "jobs": journal.counts(),
            "worker": workers[0],
            "workers": workers,
            "emotion_llm": kit.analyser.facts() if kit.analyser else None,
        }

    return HttpChannel(
        config,
        router,
        doctor=doctor_report,
        health=health,
        metrics=metrics.render,
        extra_routes=SpeechApi(config, kit.speaker, router.storage_full).routes(),
    )
