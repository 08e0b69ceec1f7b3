"""OpenAI-compatible speech: `POST /v1/audio/speech`, `GET /v1/models`, `GET /v1/audio/voices`.

Requests take their turn on the same speaker as chat jobs and use the same worker. With
`stream: true`, each sentence is sent as soon as it is spoken (pcm, wav and opus truly stream;
mp3 and flac are sent whole when done). The streamed samples equal the non-streamed ones: both
are built from the same pieces by the same encoder code. Errors use OpenAI's error shape.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from msgvoice.config import Config
from msgvoice.speech.formats import API_FORMATS, Format
from msgvoice.speech.speaker import Speaker, SpeechError, SpeechJob, WorkerError

log = logging.getLogger(__name__)

FAILURES = (SpeechError, WorkerError, OSError, ValueError)
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
SPEED_RANGE = (0.25, 4.0)


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

    def response(self) -> web.Response:
        """The error in OpenAI's shape."""
        body = {
            "error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}
        }
        return web.json_response(body, status=self.status)


class SpeechApi:
    """The OpenAI-compatible routes."""

    def __init__(self, config: Config, speaker: Speaker) -> None:
        self.config, self.speaker = config, speaker

    def routes(self) -> list[web.RouteDef]:
        """The routes to add to the HTTP channel."""
        return [
            web.post("/v1/audio/speech", self._speech),
            web.get("/v1/models", self._models),
            web.get("/v1/audio/voices", self._voices),
        ]

    async def _models(self, _request: web.Request) -> web.Response:
        names = ["msgvoice", *self.speaker.engines()]
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": 0, "owned_by": "msgvoice"}
                    for n in names
                ],
            }
        )

    async def _voices(self, _request: web.Request) -> web.Response:
        voices = self.speaker.voices()
        return web.json_response({"voices": voices, "aliases": list(OPENAI_VOICES)})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        try:
            job, fmt, stream = self._parse(await _json(request))
        except ApiError as exc:
            return exc.response()
        chunks = self.speaker.stream(job, fmt, stream)
        try:
            first = await anext(chunks, b"")
        except FAILURES as exc:
            return _failure(exc).response()
        try:
            response = web.StreamResponse(headers={"Content-Type": fmt.content_type})
            if stream:
                response.enable_chunked_encoding()
            else:
                response.content_length = len(first)
            await response.prepare(request)
            await response.write(first)
            try:
                async for item in chunks:
                    await response.write(item)
            except FAILURES as exc:  # too late for a status: cut the stream
                log.warning("speech %s failed mid-stream: %s", job.job_id, exc)
            await response.write_eof()
            return response
        finally:
            await chunks.aclose()

    def _parse(self, body: Any) -> tuple[SpeechJob, Format, bool]:
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        got = {name: _checked(body, name) for name in FIELDS}
        text, limit = got["input"], self.config.text.max_chars
        if text is None:
            raise ApiError(400, FIELDS["input"][1], "input")
        if len(text) > limit:
            raise ApiError(400, f"input is {len(text)} characters; the limit is {limit}", "input")
        voice, vector = got["voice"], got["emotion"]
        default_seed = self.config.tts.seed if self.config.tts.seed >= 0 else None
        job = SpeechJob(
            f"api-{uuid.uuid4().hex[:12]}",
            text,
            style=got["style"] or None,
            voice=None if voice in OPENAI_VOICES else voice,
            seed=default_seed if got["seed"] is None else got["seed"],
            speed=float(1.0 if got["speed"] is None else got["speed"]),
            vector=tuple(vector) if vector else None,
            lead_sentence=True,
        )
        return job, API_FORMATS[got["response_format"] or "mp3"], bool(got["stream"])


FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "input": (
        lambda v: isinstance(v, str) and bool(v.strip()),
        "input must be a non-empty string",
    ),
    "response_format": (
        lambda v: v in API_FORMATS,
        f"response_format must be one of {', '.join(API_FORMATS)}",
    ),
    "speed": (
        lambda v: _number(v) and SPEED_RANGE[0] <= v <= SPEED_RANGE[1],
        "speed must be a number from 0.25 to 4.0",
    ),
    "voice": (lambda v: isinstance(v, str), "voice must be a string"),
    "style": (lambda v: isinstance(v, str), "style must be a string"),
    "emotion": (
        lambda v: isinstance(v, list) and len(v) == 8 and all(_number(x) and x >= 0 for x in v),
        "emotion must be 8 numbers (happy, angry, sad, afraid, disgusted, "
        "melancholic, surprised, calm), each >= 0",
    ),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "seed must be an integer"),
    "stream": (lambda v: isinstance(v, bool), "stream must be true or false"),
}
"""Request fields msgvoice reads: (valid value, message when it is not). Others are ignored."""


def _checked(body: dict[str, Any], name: str) -> Any:
    """A body field, None when absent or null; ApiError naming it when it is not valid."""
    value = body.get(name)
    valid, message = FIELDS[name]
    if value is not None and not valid(value):
        raise ApiError(400, message, name)
    return value


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _failure(exc: BaseException) -> ApiError:
    if isinstance(exc, SpeechError):
        return ApiError(400, str(exc), "input")
    return ApiError(503, f"synthesis failed: {exc}", kind="server_error")


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise ApiError(400, "the body is not valid JSON") from None
