"""What the supervisor asks of a worker (`SynthRequest`) and what comes back (`Synthesis`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from msgvoice.worker.protocol import OutputParams, Prosody, Samples, SynthesisParams


@dataclass(frozen=True)
class SynthRequest:
    """One piece of text for the worker to speak."""

    job_id: str
    text: str
    voice: str | None = None
    prosody: Prosody = field(default_factory=Prosody)
    emotion: tuple[float, ...] | None = None
    timeout_cap_s: float | None = None
    """Upper bound on this request's timeout (automatic replies)."""
    seed: int | None = None
    """Seed for sampling engines, so the same request gives the same audio."""
    output: OutputParams | None = None
    """The job's whole output wanted from the worker (a job of one segment)."""

    def params(self) -> SynthesisParams:
        """The worker protocol's `synthesize` parameters."""
        params: SynthesisParams = {
            "text": self.text,
            "voice": self.voice,
            "prosody": self.prosody.as_json(),
            "emotion": list(self.emotion) if self.emotion else None,
            "seed": self.seed,
        }
        if self.output is not None:
            params["output"] = self.output
        return params


@dataclass(frozen=True)
class Output:
    """A job's finished output, encoded by the worker that spoke it."""

    data: bytes
    rate: int
    frames: int
    encode_s: float
    packets: bool = False
    """`data` is the segment's bare packets, to be put into the job's stream (`Format.joins`)."""

    @property
    def duration_s(self) -> float:
        """Seconds of audio in it."""
        return self.frames / self.rate

    @classmethod
    def of(cls, result: dict[str, Any]) -> Output | None:
        """The output a `synthesize` answer (with its `payload`) carries, if it is one."""
        made = result.get("output")
        if not isinstance(made, dict):
            return None
        rate, frames, packets = int(made["rate"]), int(made["frames"]), bool(made.get("packets"))
        return cls(result["payload"], rate, frames, made["encode_s"], packets)


@dataclass(frozen=True)
class Synthesis:
    """The worker's answer: samples and how long it took."""

    samples: Samples
    sample_rate: int
    synth_s: float
    wall_s: float
    attempts: int
    stages: dict[str, float] = field(default_factory=dict)
    """Per-stage milliseconds the engine reported (IndexTTS2: gpt_ms, s2mel_ms, vocoder_ms)."""
    unseeded_why: str | None = None
    """Why a requested seed could not be applied (the engine takes none)."""
    output: Output | None = None
    """The finished output when the request asked for it and the worker could make it
    (`samples` is then empty)."""
    spoke: bool = True
    """Whether the engine made any sound (an empty segment is left out of a job)."""
