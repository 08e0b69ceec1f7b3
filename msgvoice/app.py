"""The composition root: builds every component from the config and owns their lifetimes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from msgvoice.analyser import Analyser
from msgvoice.config import Config
from msgvoice.emotion import Emotions
from msgvoice.pipeline import Speaker
from msgvoice.supervisor import Supervisor


@dataclass
class App:
    """Everything a message needs on its way to audio."""

    config: Config
    supervisor: Supervisor
    emotions: Emotions
    speaker: Speaker
    analyser: Analyser | None


def engine_options(config: Config) -> dict[str, Any]:
    """The options the worker's engine is constructed with."""
    if config.tts.engine == "espeak":
        return {"voice": config.tts.voice}
    return {}


@contextlib.asynccontextmanager
async def build(config: Config) -> AsyncIterator[App]:
    """Start the worker (and the LLM client when configured); stop everything on exit."""
    async with contextlib.AsyncExitStack() as stack:
        analyser = None
        if config.emotion.llm_base_url:
            client = await stack.enter_async_context(httpx.AsyncClient())
            analyser = Analyser(config.emotion, client)
        emotions = Emotions(config.emotion, analyser.analyse if analyser else None)
        scratch = config.state_dir / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        supervisor = await stack.enter_async_context(
            Supervisor(config.worker, config.tts.engine, engine_options(config), scratch)
        )
        yield App(config, supervisor, emotions, Speaker(config, supervisor, emotions), analyser)
