"""What a Matrix homeserver's answers mean for msgvoice, and the events it sends.

Errors, as the client-server API defines them (spec "Standard error response" and "Rate
limiting"; matrix-nio hands them back as an `ErrorResponse` with `status_code` = errcode):
- `M_LIMIT_EXCEEDED` (429): wait `retry_after_ms`, then try again;
- `M_UNKNOWN_TOKEN` (401): the session is gone (logged out, the device deleted): log in again;
- any other 4xx (`M_FORBIDDEN`: kicked, banned, no power to post; `M_NOT_FOUND`, `M_TOO_LARGE`):
  that item never will be accepted;
- a 5xx, a body that is not Matrix JSON (a proxy's error page), a timeout or a connection that
  fails: transient.

A voice message is what Element sends (matrix-react-sdk's createVoiceMessageContent): an
`m.audio` event with `info` {mimetype, size, duration in ms}, MSC1767's `org.matrix.msc1767.file`
/ `.text` / `.audio` {duration, waveform}, and MSC3245's `org.matrix.msc3245.voice` marker, which
makes Element draw a voice bubble. MSC3246's waveform is 30-120 integers from 0 to 1024.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
from nio import AsyncClient, AsyncClientConfig, ErrorResponse

from msgvoice.channels.outbox import ChannelError, wait_out
from msgvoice.chat.port import ChatPort
from msgvoice.config import MatrixConfig

log = logging.getLogger(__name__)
logging.getLogger("nio").setLevel(logging.ERROR)  # every event at INFO; every error answer twice
T = TypeVar("T")

PREFIX = "mx:"
SESSION = "matrix.session:"
"""Cursor per homeserver and user: the device id and access token of the password login."""
UPLOAD_MAX = 50 * 1024 * 1024
"""Synapse's default max_upload_size, for a server that does not say its own."""
WAVEFORM_POINTS = 64
WAVEFORM_TOP = 1024
TEXT_LIMIT = 16_000
"""Characters per text message: a Matrix event is at most 65,536 bytes of JSON."""
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
"""What matrix-nio raises when a request never got an answer (its own retries are off)."""


class SessionLost(RuntimeError):
    """The homeserver no longer knows our access token (M_UNKNOWN_TOKEN)."""


class LoginRefused(RuntimeError):
    """The homeserver refused the bot's credentials: the channel stops (not the daemon)."""


def client_config(request_timeout_s: float) -> AsyncClientConfig:
    """matrix-nio retries 429s and timeouts forever inside one call by default; msgvoice does
    its own retrying per item and per loop, so every call returns or raises once."""
    return AsyncClientConfig(
        max_limit_exceeded=0,
        max_timeouts=0,
        request_timeout=request_timeout_s,
        encryption_enabled=False,
        store_sync_tokens=False,
    )


def failure(answer: ErrorResponse, what: str) -> Exception:
    """The exception an error answer to `what` stands for (see the module docstring)."""
    status = getattr(answer.transport_response, "status", 0) or 0
    code = answer.status_code or ""
    text = f"matrix {what}: {code or status} {answer.message}".rstrip()
    if code == "M_UNKNOWN_TOKEN":
        return SessionLost(text)
    if code == "M_LIMIT_EXCEEDED" or status == 429:
        return ChannelError(text, (answer.retry_after_ms or 5000) / 1000)
    if code.startswith("M_") and 400 <= status < 500 and status != 408:
        return ChannelError(text, permanent=True)
    return ChannelError(text)


class MatrixApi:
    """The bot's session on its homeserver, over one matrix-nio client."""

    def __init__(self, config: MatrixConfig, chat: ChatPort) -> None:
        self.config, self.chat = config, chat
        timeout = config.sync_timeout_s + 30.0
        self.client = AsyncClient(config.homeserver, config.user_id, config=client_config(timeout))
        self.upload_max = UPLOAD_MAX

    async def call(self, what: str, request: Awaitable[T]) -> T:
        """One request: an error answer or a request with no answer becomes an exception."""
        try:
            answer = await request
        except TRANSPORT_ERRORS as exc:
            raise ChannelError(f"matrix {what}: {type(exc).__name__}: {exc}") from exc
        first = answer[0] if isinstance(answer, tuple) else answer
        if isinstance(first, ErrorResponse):
            raise failure(first, what)
        return answer

    async def log_in(self) -> None:
        """A session, retried with back-off while the homeserver cannot be reached;
        LoginRefused when it refuses the credentials."""
        backoff = 0.0
        while True:
            try:
                await self._session()
                break
            except ChannelError as exc:
                if exc.permanent:
                    raise LoginRefused(str(exc)) from exc
                backoff = await wait_out("matrix login", exc, backoff)
        log.info("matrix bot %s (device %s)", self.client.user_id, self.client.device_id)
        with contextlib.suppress(ChannelError):
            media = await self.call("media config", self.client.content_repository_config())
            self.upload_max = media.upload_size or UPLOAD_MAX

    async def _session(self) -> None:
        config, key = self.config, f"{SESSION}{self.config.homeserver}|{self.config.user_id}"
        if config.access_token:
            try:
                await self._restore(config.access_token, "")
            except SessionLost as exc:
                raise LoginRefused(f"the homeserver refused matrix.access_token ({exc})") from exc
            return
        saved: dict[str, Any] = {}
        with contextlib.suppress(ValueError, TypeError):
            saved = dict(json.loads(self.chat.cursor(key) or ""))
        if saved:
            try:
                await self._restore(str(saved["access_token"]), str(saved["device_id"]))
                return
            except SessionLost:
                log.info("matrix: the homeserver forgot the saved session; logging in again")
        if not config.password:
            raise LoginRefused("neither matrix.password nor matrix.access_token is set")
        self.client.device_id = str(saved.get("device_id") or "") or None
        answer = await self.call("login", self.client.login(config.password, "msgvoice"))
        self.chat.set_cursor(
            key, json.dumps({"device_id": answer.device_id, "access_token": answer.access_token})
        )

    async def _restore(self, token: str, device_id: str) -> None:
        self.client.access_token = token
        who = await self.call("whoami", self.client.whoami())
        self.client.restore_login(who.user_id, who.device_id or device_id, token)


_FALLBACK = re.compile(r"\A(?:> .*\n)+\n?")


def text_of(content: dict[str, Any], body: str) -> str | None:
    """What a person wrote in an `m.text` or `m.emote`: the body without a reply's quoted
    fallback; None for an edit (`m.replace`), which is not spoken again."""
    relation = content.get("m.relates_to")
    relation = relation if isinstance(relation, dict) else {}
    if relation.get("rel_type") == "m.replace":
        return None
    if "m.in_reply_to" in relation:
        body = _FALLBACK.sub("", body, count=1)
    return body


def addressed(text: str, names: tuple[str, ...]) -> str:
    """`text` without a leading mention of the bot (`msgvoice: /tts hi`, as Element completes
    a name in a group)."""
    for name in filter(None, names):
        for sep in (": ", ", ", " "):
            if text.lower().startswith(name.lower() + sep):
                return text[len(name) + len(sep) :].lstrip()
    return text


def voice_content(
    url: str, size: int, duration_ms: int, levels: list[float], body: str = "Voice message"
) -> dict[str, Any]:
    """An `m.audio` event Element shows as a voice bubble with a waveform."""
    waveform = [round(level * WAVEFORM_TOP) for level in levels]
    return {
        "msgtype": "m.audio",
        "body": body,
        "url": url,
        "info": {"mimetype": "audio/ogg", "size": size, "duration": duration_ms},
        "org.matrix.msc1767.text": body,
        "org.matrix.msc1767.file": {
            "url": url,
            "name": f"{body}.ogg",
            "mimetype": "audio/ogg",
            "size": size,
        },
        "org.matrix.msc1767.audio": {"duration": duration_ms, "waveform": waveform},
        "org.matrix.msc3245.voice": {},
    }
