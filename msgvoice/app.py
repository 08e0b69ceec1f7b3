"""The shared composition root: the worker, emotion and speaker every command builds on
(the daemon adds its journal, lanes and channels in daemon.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from msgvoice.analyser import Analyser
from msgvoice.config import Config
from msgvoice.emotion import Emotions
from msgvoice.pipeline import Speaker
from msgvoice.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass
class App:
    """Everything a message needs on its way to audio."""

    config: Config
    supervisor: Supervisor
    emotions: Emotions
    speaker: Speaker
    analyser: Analyser | None
    client: httpx.AsyncClient


def engine_options(config: Config, engine: str | None = None) -> dict[str, Any]:
    """The options an engine's worker constructs it with (the main engine by default)."""
    engine = engine or config.tts.engine
    if engine == "espeak":
        return {"voice": config.tts.voice if engine == config.tts.engine else "cmn"}
    if engine == "indextts2":
        return dataclasses.asdict(config.indextts) | {"cache_dir": str(config.state_dir / "refs")}
    return {}


@contextlib.asynccontextmanager
async def build(config: Config) -> AsyncIterator[App]:
    """Start the worker and the shared HTTP client; stop everything on exit."""
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient())
        analyser = Analyser(config.emotion, client) if config.emotion.llm_base_url else None
        emotions = Emotions(config.emotion, analyser.analyse if analyser else None)
        scratch = config.state_dir / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        supervisor = await stack.enter_async_context(
            Supervisor(config.worker, config.tts.engine, engine_options(config), scratch)
        )
        fallbacks = [  # started only when first needed
            await stack.enter_async_context(
                Supervisor(
                    dataclasses.replace(config.worker, eager=False),
                    name,
                    engine_options(config, name),
                    scratch,
                )
            )
            for name in config.tts.fallback
            if name != config.tts.engine
        ]
        speaker = Speaker(config, [supervisor, *fallbacks], emotions)
        yield App(config, supervisor, emotions, speaker, analyser, client)
