"""The body of `POST /v1/audio/speech` as OpenAI defines it (openai-python's
`speech_create_params.py`), read as real clients send it: the openai SDK, Open WebUI (`input`,
`voice`, `model`, plus the admin's extra params), Home Assistant (with `instructions` on every
call, sometimes the literal "None"). Every field is checked; a bad one is a 400 naming it.

Extensions: `style` (a style hint, wins over `instructions`), `emotion` (8 numbers), `seed`,
`stream` (false: the whole file with a length). Unknown fields are ignored, as OpenAI does.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msgvoice.config import Config
from msgvoice.speech.formats import API_FORMATS, Format
from msgvoice.speech.speaker import SpeechJob, speakable

OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx",
    "nova", "sage", "shimmer", "verse", "marin", "cedar",
)  # fmt: skip
"""OpenAI's built-in voices: aliases of the configured voice (or as `tts.voice_aliases` say)."""
SPEED_RANGE = (0.25, 4.0)
SEED_RANGE = (-(2**63), 2**63 - 1)
ABSENT_INSTRUCTIONS = ("", "none", "null")


class ApiError(Exception):
    """A request OpenAI's API would refuse: status, message and the offending parameter."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind

    def as_json(self) -> dict[str, Any]:
        """The error in OpenAI's shape."""
        return {
            "error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}
        }


@dataclass(frozen=True)
class SpeechRequest:
    """What a request asks for."""

    job: SpeechJob
    fmt: Format
    stream: bool
    """Send bytes as they are made (chunked), rather than the whole file with its length."""
    sse: bool
    """`stream_format: "sse"`: the audio as `speech.audio.delta` events."""


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _in(x: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= x <= bounds[1]


def _text(x: Any) -> bool:
    """A string that is valid Unicode (a lone surrogate such as "\\ud800" is not)."""
    if not isinstance(x, str):
        return False
    try:
        x.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "input": (lambda v: _text(v) and bool(v.strip()), "input must be a non-empty string"),
    "model": (_text, "model must be a string"),
    "voice": (
        lambda v: _text(v) or (isinstance(v, dict) and _text(v.get("id"))),
        'voice must be a voice name or an object {"id": name}',
    ),
    "instructions": (_text, "instructions must be a string"),
    "response_format": (
        lambda v: _text(v) and v in API_FORMATS,
        f"response_format must be one of {', '.join(API_FORMATS)}",
    ),
    "speed": (
        lambda v: _number(v) and SPEED_RANGE[0] <= v <= SPEED_RANGE[1],
        "speed must be a number from 0.25 to 4.0",
    ),
    "stream_format": (
        lambda v: _text(v) and v in ("sse", "audio"),
        "stream_format must be sse or audio",
    ),
    "stream": (lambda v: isinstance(v, bool), "stream must be true or false"),
    "style": (_text, "style must be a string"),
    "emotion": (
        lambda v: isinstance(v, list) and len(v) == 8 and all(_number(x) and x >= 0 for x in v),
        "emotion must be 8 numbers (happy, angry, sad, afraid, disgusted, "
        "melancholic, surprised, calm), each >= 0",
    ),
    "seed": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and _in(v, SEED_RANGE),
        "seed must be a 64-bit integer",
    ),
}  # fmt: skip
"""Fields msgvoice reads: (valid value, message when it is not)."""


def _checked(body: dict[str, Any], name: str) -> Any:
    """A body field, None when absent or null; ApiError naming it when it is not valid."""
    value = body.get(name)
    valid, message = FIELDS[name]
    if value is not None and not valid(value):
        raise ApiError(400, message, name)
    return value


def voice_aliases(config: Config) -> dict[str, str]:
    """`tts.voice_aliases` ("alloy=en-us", ...) as a mapping."""
    return dict(item.split("=", 1) for item in config.tts.voice_aliases)


def resolve_voice(raw: Any, config: Config, voice_named: Callable[[str], str | None]) -> str | None:
    """The engine voice a request's `voice` names, in the engine's spelling (None: the
    configured one)."""
    name = raw.get("id") if isinstance(raw, dict) else raw
    if name is None or name == "default":
        return None
    aliases = voice_aliases(config)
    if name in aliases:
        return voice_named(aliases[name]) or aliases[name]
    if name in OPENAI_VOICES:
        return None
    if (spelt := voice_named(name)) is None:
        raise ApiError(
            400,
            f"voice {name!r} is not available here; GET /v1/audio/voices lists the voices "
            f"(OpenAI's names and 'default' mean the configured voice)",
            "voice",
        )
    return spelt


def parse(body: Any, config: Config, voice_named: Callable[[str], str | None]) -> SpeechRequest:
    """Read a request body; ApiError (400) for anything OpenAI or msgvoice would refuse."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    got = {name: _checked(body, name) for name in FIELDS}
    text, limit = got["input"], config.text.max_chars
    if text is None:
        raise ApiError(400, FIELDS["input"][1], "input")
    if len(text) > limit:
        raise ApiError(400, f"input is {len(text)} characters; the limit is {limit}", "input")
    if not speakable(text):
        raise ApiError(
            400, "input has nothing to speak (only emoji, punctuation or blanks)", "input"
        )
    instructions = (got["instructions"] or "").strip()
    style = got["style"] or (None if instructions.lower() in ABSENT_INSTRUCTIONS else instructions)
    fmt = API_FORMATS[got["response_format"] or "mp3"]
    sse = got["stream_format"] == "sse"
    default_seed = config.tts.seed if config.tts.seed >= 0 else None
    job = SpeechJob(
        f"api-{uuid.uuid4().hex[:12]}",
        text,
        style=style,
        voice=resolve_voice(got["voice"], config, voice_named),
        seed=default_seed if got["seed"] is None else got["seed"],
        speed=float(1.0 if got["speed"] is None else got["speed"]),
        vector=tuple(got["emotion"]) if got["emotion"] else None,
        lead_clause=True,
    )
    stream = sse or (fmt.streams if got["stream"] is None else got["stream"])
    return SpeechRequest(job, fmt, stream, sse)
