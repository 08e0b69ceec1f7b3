"""OpenAI-compatible speech: `POST /v1/audio/speech`, `GET /v1/models`, `GET /v1/audio/voices`,
`GET /v1/audio/models`.

Requests share the speaker's workers with chat jobs. Formats that can stream (opus, aac, wav,
pcm) stream by default, as OpenAI and Kokoro-FastAPI do: the first sentence is sent as soon as
it is spoken; mp3 and flac come whole (`stream: false` asks for the whole file with its length
in any format). `stream_format: "sse"` sends the audio as `speech.audio.delta` events
(`{"type", "audio": base64}`) and ends with `speech.audio.done`, whose `usage` has OpenAI's
three counts (input characters stand in for tokens). The streamed samples equal the
whole-file ones: both come from the same pieces through the same encoder. Errors use OpenAI's
shape; nothing a client sends causes a 5xx.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from aiohttp import web

from msgvoice.channels.speech_request import OPENAI_VOICES, ApiError, SpeechRequest, parse
from msgvoice.channels.views import BadRequest, json_response, read_json
from msgvoice.config import Config
from msgvoice.speech.speaker import Speaker, SpeechError, WorkerError

log = logging.getLogger(__name__)

FAILURES = (SpeechError, WorkerError, OSError, ValueError)


def _error(exc: ApiError) -> web.Response:
    return json_response(exc.as_json(), status=exc.status)


def _failure(exc: BaseException) -> ApiError:
    if isinstance(exc, SpeechError):  # the request's fault: nothing to say, a refused voice
        return ApiError(400, str(exc), None)
    return ApiError(503, f"synthesis failed: {exc}", kind="server_error")


def _event(kind: str, **fields: Any) -> bytes:
    return f"data: {json.dumps({'type': kind, **fields})}\n\n".encode()


class SpeechApi:
    """The OpenAI-compatible routes."""

    def __init__(
        self,
        config: Config,
        speaker: Speaker,
        storage_full: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.config, self.speaker, self.storage_full = config, speaker, storage_full

    def routes(self) -> list[web.RouteDef]:
        """The routes to add to the HTTP channel."""
        return [
            web.post("/v1/audio/speech", self._speech),
            web.get("/v1/models", self._models),
            web.get("/v1/audio/models", self._audio_models),
            web.get("/v1/audio/voices", self._voices),
        ]

    def _model_ids(self) -> list[str]:
        return ["msgvoice", *self.speaker.engines()]

    async def _models(self, _request: web.Request) -> web.Response:
        data = [
            {"id": n, "object": "model", "created": 0, "owned_by": "msgvoice"}
            for n in self._model_ids()
        ]
        return json_response({"object": "list", "data": data})

    async def _audio_models(self, _request: web.Request) -> web.Response:
        return json_response({"models": [{"id": n} for n in self._model_ids()]})

    async def _voices(self, _request: web.Request) -> web.Response:
        spoken = self.speaker.voice_languages()
        default = spoken.get(self.config.tts.voice, [])
        voices = [{"id": "default", "name": "default", "languages": default}] + [
            {"id": v, "name": v, "languages": spoken.get(v, [])} for v in self.speaker.voices()
        ]
        return json_response({"voices": voices, "aliases": list(OPENAI_VOICES)})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        try:
            if (why := self.storage_full()) is not None:
                raise ApiError(
                    507, f"msgvoice cannot store audio right now: {why}", None, "server_error"
                )
            body = await _json(request, self.config.http.body_timeout_s)
            asked = parse(body, self.config, self.speaker.voice_named)
        except ApiError as exc:
            return _error(exc)
        chunks = self.speaker.stream(asked.job, asked.fmt, asked.stream)
        try:
            first = await anext(chunks, b"")
        except FAILURES as exc:
            await chunks.aclose()
            return _error(_failure(exc))
        try:
            return await self._respond(request, asked, first, chunks)
        finally:
            await chunks.aclose()

    async def _respond(
        self,
        request: web.Request,
        asked: SpeechRequest,
        first: bytes,
        rest: AsyncGenerator[bytes, None],
    ) -> web.StreamResponse:
        content_type = "text/event-stream" if asked.sse else asked.fmt.content_type
        response = web.StreamResponse(headers={"Content-Type": content_type})
        if asked.stream:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(first)
        try:
            await response.prepare(request)
            await self._send(response, asked, first)
            async for chunk in rest:
                await self._send(response, asked, chunk)
        except ConnectionError:  # the client hung up: its audio is no longer made
            log.debug("speech %s: the client went away", asked.job.job_id)
            return response
        except FAILURES as exc:  # too late for a status: end the stream early
            log.warning("speech %s failed mid-stream: %s", asked.job.job_id, exc)
        else:
            if asked.sse:
                chars = len(asked.job.text)  # no tokenizer here: a character is a token
                usage = {"input_tokens": chars, "output_tokens": 0, "total_tokens": chars}
                await response.write(_event("speech.audio.done", usage=usage))
        await response.write_eof()
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, asked: SpeechRequest, chunk: bytes) -> None:
        if not chunk:
            return
        if asked.sse:
            chunk = _event("speech.audio.delta", audio=base64.b64encode(chunk).decode())
        await response.write(chunk)


async def _json(request: web.Request, timeout_s: float) -> Any:
    try:
        return await read_json(request, timeout_s)
    except BadRequest as exc:
        raise ApiError(exc.status, str(exc)) from None
