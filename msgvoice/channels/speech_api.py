"""OpenAI-compatible speech: `POST /v1/audio/speech`, `GET /v1/models`, `GET /v1/audio/voices`.

Requests take their turn in the same synthesis lane as chat jobs and use the same worker. With
`stream: true`, each sentence is sent as soon as it is spoken (pcm, wav and opus truly stream;
mp3 and flac are sent whole when done). The streamed samples equal the non-streamed ones: both
are built from the same pieces by the same encoder code. Errors use OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from msgvoice import audio
from msgvoice.config import Config
from msgvoice.lanes import Lane
from msgvoice.pipeline import Report, Speaker, SpeechError, SpeechJob
from msgvoice.streaming import Encoder, wav_header
from msgvoice.supervisor import Synthesis, WorkerError

log = logging.getLogger(__name__)

FORMATS = ("mp3", "opus", "wav", "flac", "pcm")
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "pcm": "audio/pcm",
}
PCM_RATE = 24_000  # OpenAI's pcm: 24 kHz, 16-bit signed little-endian, mono
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

    def __init__(
        self, config: Config, speaker: Speaker, lane: Lane, voices: Callable[[], list[str]]
    ) -> None:
        self.config, self.speaker, self.lane, self.voices = config, speaker, lane, voices
        self.scratch = config.state_dir / "tmp"

    def routes(self) -> list[web.RouteDef]:
        """The routes to add to the HTTP channel."""
        return [
            web.post("/v1/audio/speech", self._speech),
            web.get("/v1/models", self._models),
            web.get("/v1/audio/voices", self._voices),
        ]

    async def _models(self, _request: web.Request) -> web.Response:
        names = ["msgvoice", *(s.engine for s in self.speaker.supervisors)]
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
        return web.json_response({"voices": self.voices(), "aliases": list(OPENAI_VOICES)})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        try:
            job, fmt, stream = self._parse(await _json(request))
        except ApiError as exc:
            return exc.response()
        chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(job, fmt, stream, chunks))
        try:
            first = await chunks.get()
            if isinstance(first, BaseException):
                return _failure(first).response()
            response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPES[fmt]})
            if stream:
                response.enable_chunked_encoding()
            else:
                response.content_length = len(first or b"")
            await response.prepare(request)
            item: bytes | BaseException | None = first
            while item is not None:
                if isinstance(item, BaseException):  # too late for a status: cut the stream
                    log.warning("speech %s failed mid-stream: %s", job.job_id, item)
                    break
                if item:
                    await response.write(item)
                item = await chunks.get()
            await response.write_eof()
            return response
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    def _parse(self, body: Any) -> tuple[SpeechJob, str, bool]:
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        limit = self.config.text.max_chars
        text = _field(
            body,
            "input",
            lambda v: isinstance(v, str) and bool(v.strip()),
            "input must be a non-empty string",
            required=True,
        )
        if len(text) > limit:
            raise ApiError(400, f"input is {len(text)} characters; the limit is {limit}", "input")
        fmt = _field(
            body,
            "response_format",
            lambda v: v in FORMATS,
            f"response_format must be one of {', '.join(FORMATS)}",
            default="mp3",
        )
        speed = _field(
            body,
            "speed",
            lambda v: _number(v) and SPEED_RANGE[0] <= v <= 4.0,
            "speed must be a number from 0.25 to 4.0",
            default=1.0,
        )
        voice = _field(body, "voice", lambda v: isinstance(v, str), "voice must be a string")
        style = _field(body, "style", lambda v: isinstance(v, str), "style must be a string")
        vector = _field(
            body,
            "emotion",
            lambda v: isinstance(v, list) and len(v) == 8 and all(_number(x) and x >= 0 for x in v),
            "emotion must be 8 numbers (happy, angry, sad, afraid, disgusted, "
            "melancholic, surprised, calm), each >= 0",
        )
        default_seed = self.config.tts.seed if self.config.tts.seed >= 0 else None
        seed = _field(
            body,
            "seed",
            lambda v: isinstance(v, int) and not isinstance(v, bool),
            "seed must be an integer",
            default=default_seed,
        )
        stream = _field(
            body,
            "stream",
            lambda v: isinstance(v, bool),
            "stream must be true or false",
            default=False,
        )
        job = SpeechJob(
            f"api-{uuid.uuid4().hex[:12]}",
            text,
            Path(),
            fmt,
            style=style or None,
            voice=None if voice in OPENAI_VOICES else voice,
            seed=seed,
            speed=float(speed),
            vector=tuple(vector) if vector else None,
            lead_sentence=True,
        )
        return job, fmt, stream

    async def _produce(
        self,
        job: SpeechJob,
        fmt: str,
        stream: bool,
        chunks: asyncio.Queue[bytes | BaseException | None],
    ) -> None:
        """Speak the job in the lane's turn and queue encoded bytes; the turn is not held
        while a slow client reads."""
        encoder: Encoder | None = None
        pending: list[bytes] = []

        def emit(data: bytes) -> None:
            if stream:
                chunks.put_nowait(data)
            else:
                pending.append(data)

        try:
            async with self.lane.turn:
                async for synthesis in self.speaker.syntheses(job, Report()):
                    if encoder is None:
                        encoder = await asyncio.to_thread(
                            Encoder, fmt, _rate(fmt, synthesis, self.config), stream, self.scratch
                        )
                        emit(encoder.start())
                    emit(await asyncio.to_thread(self._encode, encoder, synthesis))
            assert encoder is not None
            tail = await asyncio.to_thread(encoder.finish)
            if fmt == "wav" and not stream:
                pending.insert(0, wav_header(encoder.rate, encoder.pcm_bytes))
            emit(tail)
            if not stream:
                chunks.put_nowait(b"".join(pending))
            chunks.put_nowait(None)
        except (WorkerError, SpeechError, OSError, ValueError) as exc:
            if encoder is not None:
                encoder.abort()
            chunks.put_nowait(exc)

    def _encode(self, encoder: Encoder, synthesis: Synthesis) -> bytes:
        return encoder.feed(self.speaker.piece(synthesis, encoder.rate, encoder.pieces > 0))


def _rate(fmt: str, synthesis: Synthesis, config: Config) -> int:
    if fmt == "pcm":
        return PCM_RATE
    return audio.output_rate(
        "ogg" if fmt == "opus" else fmt, synthesis.sample_rate, config.audio.opus_rate_hz
    )


def _field(
    body: dict[str, Any],
    name: str,
    valid: Callable[[Any], bool],
    message: str,
    *,
    default: Any = None,
    required: bool = False,
) -> Any:
    """A body field checked by `valid` (absent or null: the default)."""
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, message, name)
        return default
    if not valid(value):
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
