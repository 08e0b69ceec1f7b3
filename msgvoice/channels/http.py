"""The HTTP channel (aiohttp): messages in, jobs and outbox out, audio files, health, metrics.

Bad input is always a 4xx with `{"error": "..."}`, never a 500. Without a token the channel
binds only to loopback; with one, every route but /healthz needs `Authorization: Bearer`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from msgvoice.channels.connections import ConnectionGuard, GuardedSite, quiet_client_trouble
from msgvoice.channels.fields import checked_id, in_query, string_field
from msgvoice.channels.views import BadRequest, item_json, job_json, json_response, read_json
from msgvoice.chat.port import (
    FINAL_STATES,
    ID_MAX,
    ChatPort,
    Incoming,
    Job,
    Outcome,
    allowed,
    next_ring,
)
from msgvoice.config import Config, ConfigError
from msgvoice.speech.formats import FILE_FORMATS

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AUDIO_NAME = re.compile(rf"^[0-9a-f]{{16}}\.({'|'.join(FILE_FORMATS)})$")
OPEN_ROUTES = ("/healthz",)
T = TypeVar("T")
WAIT_MAX_S = 60.0
"""Longest `?wait=` a client may hold a request open for."""
SEQ_MAX = 2**63 - 1
"""Largest sequence number (sqlite's integers are 64-bit)."""


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the channel on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _wait_s(request: web.Request) -> float:
    """`?wait=`: how long a client holds a request open for a change."""
    return in_query(request, "wait", WAIT_MAX_S, "seconds")


class HttpChannel:
    """Serves the HTTP API for the daemon."""

    def __init__(
        self,
        config: Config,
        chat: ChatPort,
        *,
        doctor: Callable[[], Awaitable[dict[str, Any]]],
        health: Callable[[], dict[str, Any]],
        metrics: Callable[[], bytes],
        extra_routes: list[web.RouteDef] | None = None,
    ) -> None:
        http = config.http
        if not http.token and not is_loopback(http.host):
            raise ConfigError(
                f"http.host = {http.host!r} is not loopback: set http.token "
                "(MSGVOICE_HTTP_TOKEN) before exposing the HTTP channel"
            )
        self.config, self.chat = config, chat
        self.doctor, self.health, self.metrics = doctor, health, metrics
        self.accepting = True
        self._waiting: set[asyncio.Queue[str]] = set()
        self.guard = ConnectionGuard(http.max_connections)
        self.app = web.Application(
            client_max_size=http.max_body_bytes,
            middlewares=[self.guard.middleware, self._errors, self._auth],
        )
        self.app.add_routes(
            [
                web.post("/v1/messages", self._message),
                web.post("/v1/chats/{chat_id}/replies", self._reply),
                web.get("/v1/jobs/{job_id}", self._job),
                web.get("/v1/chats/{chat_id}/outbox", self._outbox),
                web.get("/v1/audio/{name}", self._audio),
                web.get("/healthz", self._healthz),
                web.get("/v1/doctor", self._doctor),
                web.get("/metrics", self._metrics),
                *(extra_routes or []),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        """Bind and serve."""
        http = self.config.http
        quiet_client_trouble()
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=5.0, keepalive_timeout=http.idle_timeout_s
        )
        await self._runner.setup()
        site = GuardedSite(self._runner, http.host, http.port, self.guard)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"cannot listen on {self.config.http.host}:{self.config.http.port}: "
                f"{exc.strerror or exc} (set http.port / MSGVOICE_HTTP_PORT)"
            ) from exc
        self.port = int(self._runner.addresses[0][1])
        log.info("http channel on %s:%d", self.config.http.host, self.port)

    @property
    def waiters(self) -> int:
        """Requests holding a `?wait=` open right now."""
        return len(self._waiting)

    async def stop(self) -> None:
        """Answer the requests that are waiting, close the listener and open connections."""
        for bell in self._waiting:
            bell.put_nowait("")  # stop waiting (see _until)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- middleware --------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return json_response({"error": str(exc)}, status=exc.status)
        except web.HTTPException as exc:  # aiohttp's own 404, 405, 413 …
            if exc.status < 400:
                raise
            return json_response({"error": exc.reason}, status=exc.status)
        except Exception as exc:
            if not self.chat.storage_trouble(exc):
                raise
            return json_response({"error": f"storage is full: {exc}"}, status=507)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self.config.http.token
        if token and request.path not in OPEN_ROUTES:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise BadRequest(401, "missing or wrong bearer token")
        return await handler(request)

    # -- input -------------------------------------------------------------------------------

    def _taking_work(self) -> None:
        """503 while stopping, 507 while the state dir is full."""
        if not self.accepting:
            raise BadRequest(503, "shutting down")
        if (why := self.chat.storage_full()) is not None:
            raise BadRequest(507, f"msgvoice cannot store voice notes right now: {why}")

    async def _body(self, request: web.Request, *required: str) -> dict[str, Any]:
        self._taking_work()
        body = await read_json(request, self.config.http.body_timeout_s)
        if not isinstance(body, dict):
            raise BadRequest(400, "body must be a JSON object")
        for name in required:
            if name not in body:
                raise BadRequest(400, f"missing field {name!r}")
        return body

    @staticmethod
    def _outcome(outcome: Outcome, **extra: str) -> web.Response:
        return json_response(
            {**extra, "jobs": outcome.jobs, "replies": outcome.replies}, status=202
        )

    def _final(self, job_id: str) -> Job | None:
        job = self.chat.job(job_id)
        return job if job is not None and job.state in FINAL_STATES else None

    async def _until(self, chat_id: str, probe: Callable[[], T | None], wait_s: float) -> T | None:
        """`probe()`'s answer once it has one (asked again whenever the chat's jobs or outbox
        change), or None after `wait_s` or when the channel stops. The caller has just looked
        itself, with no await since, so no change can slip by before the bell is heard."""
        if wait_s <= 0:
            return None
        deadline = time.monotonic() + wait_s
        ours_or_stop = (chat_id, "")  # no chat has an empty id: it means "stop waiting"
        with self.chat.bell.listening() as bell:
            self._waiting.add(bell)
            try:
                left = deadline - time.monotonic()
                while await next_ring(bell, ours_or_stop.__contains__, left) == chat_id:
                    if found := probe():
                        return found
                    left = deadline - time.monotonic()
            finally:
                self._waiting.discard(bell)
        return None

    # -- routes ------------------------------------------------------------------------------

    async def _message(self, request: web.Request) -> web.Response:
        body = await self._body(request, "chat_id", "text")
        chat_id = checked_id(string_field(body, "chat_id", ID_MAX * 4))  # an id's limit is a 400
        text = string_field(body, "text", self.config.text.max_chars)
        sender = string_field(body, "sender", ID_MAX * 4, required=False) or None
        if sender is not None:
            checked_id(sender, "sender")
        outcome = await self.chat.message(Incoming(chat_id, text, sender, self.config.http.allow))
        if outcome.ignored:
            raise BadRequest(403, "this chat or sender is not on the allow-list")
        return self._outcome(outcome, message_id=uuid.uuid4().hex[:16])

    async def _reply(self, request: web.Request) -> web.Response:
        chat_id = checked_id(request.match_info["chat_id"])
        if not allowed(self.config.http.allow, chat_id, None):
            raise BadRequest(403, "this chat is not on the allow-list")
        body = await self._body(request, "text")
        text = string_field(body, "text", self.config.text.max_chars)
        return self._outcome(self.chat.bot_reply(chat_id, text))

    async def _job(self, request: web.Request) -> web.Response:
        job_id, wait_s = request.match_info["job_id"], _wait_s(request)
        job = self.chat.job(job_id)
        if job is None:
            raise BadRequest(404, "no such job")
        if job.state not in FINAL_STATES:
            final = await self._until(job.chat_id, lambda: self._final(job_id), wait_s)
            job = final or self.chat.job(job_id) or job  # not final yet: as it is now
        return json_response(job_json(job, self.chat.delivery(job.id)))

    async def _outbox(self, request: web.Request) -> web.Response:
        chat_id, wait_s = checked_id(request.match_info["chat_id"]), _wait_s(request)
        after = int(in_query(request, "after", SEQ_MAX, "a sequence number"))
        found = self.chat.outbox(chat_id, after)
        if found is None:
            raise BadRequest(404, "no such chat")
        if not found:  # nothing new yet: every new item rings the bell
            found = await self._until(chat_id, lambda: self.chat.outbox(chat_id, after), wait_s)
        return json_response({"items": [item_json(row) for row in found or []]})

    async def _audio(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        match = AUDIO_NAME.match(name)
        path = self.config.paths.audio / name
        if match is None or not path.is_file():
            raise BadRequest(404, "no such audio")
        content_type = FILE_FORMATS[match.group(1)].content_type
        return web.FileResponse(path, headers={"Content-Type": content_type})

    async def _healthz(self, _request: web.Request) -> web.Response:
        try:
            facts = self.health()
        except Exception as exc:  # a fact that cannot be read (out of files) is a fact too
            log.warning("healthz: %s", exc)
            reason = f"cannot read the daemon's facts: {type(exc).__name__}: {exc}"
            return json_response({"status": "degraded", "reason": reason})
        status = 503 if facts.get("worker", {}).get("state") == "failed" else 200
        return json_response(facts, status=status)

    async def _doctor(self, _request: web.Request) -> web.Response:
        return json_response(await self.doctor())

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )
