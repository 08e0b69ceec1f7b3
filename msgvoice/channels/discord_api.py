"""What Discord's REST API answers mean for msgvoice, and the requests it makes.

Requests go through discord.py's HTTP client, which keeps Discord's rate limits
(topics/rate-limits.mdx): it waits a 429's `retry_after` on that route's bucket, and on every
route while the global limit is hit, then tries again; a wait over `RATE_LIMIT_WAIT_MAX_S`
is raised instead (`RateLimited`), so the pump holds only that chat for it. It also retries a
500/502/504 a few times itself. What it then raises becomes (opcodes-and-status-codes.mdx):
- 50173 (the channel takes no voice messages): `NoVoice`, and the note goes as an ordinary
  audio attachment;
- any other 4xx: that item never will be accepted: Missing Access (50001), Missing
  Permissions (50013), Unknown Channel (10003), Cannot send messages to this user (50007);
- a 5xx, a 401 (a token reset while running: the Gateway says so in the log), a request with
  no answer: transient.

A voice message (resources/message.mdx "Voice Messages") is a message with the
IS_VOICE_MESSAGE flag and one OGG/Opus attachment whose metadata carries `duration_secs` and
a base64 `waveform` of at most 256 bytes, one per datapoint; nothing else. Each create carries
a `nonce` made of the chat, seq and part with `enforce_nonce`, so a retry after a lost answer
posts nothing twice: Discord answers with the message it already made.

Slash commands waiting for their answer ("thinking…") are journalled per chat (`Deferrals`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import aiohttp
import discord
from discord.http import HTTPClient, Route

from msgvoice.channels.outbox import ChannelError
from msgvoice.chat.port import ChatPort, OutboxItem

log = logging.getLogger(__name__)

T = TypeVar("T")
PREFIX = "dc:"
IS_VOICE_MESSAGE = 1 << 13
NO_VOICE = 50173
TEXT_LIMIT = 2000
"""Characters of a message's content."""
UPLOAD_MAX = 10 * 2**20
"""The default upload limit per file (reference.mdx "Uploading Files")."""
WAVEFORM_POINTS = 256
RATE_LIMIT_WAIT_MAX_S = 30.0
"""discord.py's least `max_ratelimit_timeout`: longer waits are the pump's."""


def _command(name: str, about: str, zh: str, option: dict[str, Any] | None) -> dict[str, Any]:
    """A global slash command usable in servers, the bot's DMs and other DMs (contexts), when
    installed to a server or to a user (integration_types)."""
    return {
        "name": name,
        "type": 1,
        "description": about,
        "description_localizations": {"zh-CN": zh},
        "options": [{"type": 3, **option}] if option else [],
        "contexts": [0, 1, 2],
        "integration_types": [0, 1],
    }


COMMANDS = [
    _command(
        "tts",
        "Say it as a voice message (style：text for a one-off style)",
        "把这句话说成语音（风格：文字）",
        {"name": "text", "required": True, "description": "What to say"},
    ),
    _command(
        "mode",
        "Show or set this channel's voice: voice on|off, style …, speaker …",
        "查看或设置本频道的声音",
        {"name": "setting", "required": False, "description": "e.g. style 温柔"},
    ),
    _command("help", "What this bot can do", "这个机器人能做什么", None),
]
"""The global slash commands (interactions/application-commands.mdx): each stands for the
chat command of its name, its one option the rest of the line."""
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
Body = dict[str, Any] | list[dict[str, Any]]
"""A request's JSON body, or its multipart parts (`voice_form`)."""


DEFERRED = "discord.deferred:"
"""Cursor per chat: its slash commands still "thinking…" (application, token, when)."""
TOKEN_LIFETIME_MS = 14 * 60 * 1000
"""An interaction's token works for 15 minutes; what is left after this is not used."""


class _OneLine(logging.Filter):
    """discord.py logs a reconnect after a network error with its traceback: one line is
    enough for what is not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()} ({type(record.exc_info[1]).__name__}: "
            record.msg += f"{record.exc_info[1]})"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


logging.getLogger("discord").setLevel(logging.WARNING)  # every connection and resume at INFO
logging.getLogger("discord").addFilter(_OneLine())
logging.getLogger("discord.client").addFilter(_OneLine())
discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False  # no voice channels here


class NoVoice(ChannelError):
    """The channel takes no voice messages (50173)."""


def failure(exc: Exception, what: str) -> ChannelError:
    """The ChannelError an exception of discord.py's HTTP client stands for."""
    if isinstance(exc, discord.RateLimited):
        return ChannelError(f"discord {what}: rate limited", exc.retry_after)
    if not isinstance(exc, discord.HTTPException):
        return ChannelError(f"discord {what}: {type(exc).__name__}: {exc}")
    text = f"discord {what}: {exc.status} {exc.code} {exc.text}".rstrip()
    if exc.code == NO_VOICE:
        return NoVoice(text, permanent=True)
    permanent = 400 <= exc.status < 500 and exc.status not in (401, 408, 429)
    return ChannelError(text, permanent=permanent)


class Rest:
    """The bot's REST calls, over the HTTP client of its Gateway connection."""

    def __init__(self, http: HTTPClient) -> None:
        self.http = http

    async def call(self, what: str, request: Awaitable[T]) -> T:
        try:
            return await request
        except (discord.HTTPException, discord.RateLimited, *TRANSPORT_ERRORS) as exc:
            raise failure(exc, what) from exc

    async def gateway(self) -> str:
        """The Gateway's URL (GET /gateway/bot)."""
        answer = await self.call("gateway", self.http.request(Route("GET", "/gateway/bot")))
        return str(answer["url"])

    async def register(self, application_id: int) -> None:
        route = Route("PUT", "/applications/{app}/commands", app=application_id)
        await self.call("command registration", self.http.request(route, json=COMMANDS))

    async def defer(self, interaction_id: int, token: str) -> None:
        """DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "thinking…" until the answer replaces it."""
        route = Route("POST", "/interactions/{id}/{token}/callback", id=interaction_id, token=token)
        await self.call("deferral", self.http.request(route, json={"type": 5}))

    async def answer(self, app: int, token: str, body: Body) -> None:
        """Replace an interaction's "thinking…" (its original response)."""
        route = Route("PATCH", "/webhooks/{app}/{token}/messages/@original", app=app, token=token)
        await self.call("interaction answer", self._request(route, body))

    async def answer_text(self, deferred: Deferred, text: str) -> bool:
        """A text in place of a command's "thinking…"; False when its token no longer works
        (the text then goes to the channel)."""
        try:
            await self.answer(deferred.app, deferred.token, text_body(text))
        except ChannelError as exc:
            if not exc.permanent:
                raise
            return False
        return True

    async def withdraw(self, app: int, token: str) -> None:
        """Delete an interaction's "thinking…", now that the answer is in the channel."""
        route = Route("DELETE", "/webhooks/{app}/{token}/messages/@original", app=app, token=token)
        await self.call("interaction withdrawal", self.http.request(route))

    async def post(self, channel_id: str, body: Body) -> None:
        route = Route("POST", "/channels/{channel_id}/messages", channel_id=channel_id)
        await self.call("send", self._request(route, body))

    def _request(self, route: Route, body: Body) -> Awaitable[Any]:
        """JSON, or multipart/form-data (payload_json and files[n]) for a list of parts."""
        if isinstance(body, list):
            return self.http.request(route, form=body)
        return self.http.request(route, json=body)


@dataclass(frozen=True)
class Deferred:
    """A slash command acknowledged with "thinking…", waiting for its answer."""

    app: int
    token: str
    at_ms: int


class Deferrals:
    """The slash commands still "thinking…", per chat, in the journal (a restart still
    answers them). A reply answers the latest one made before it; older ones it leaves
    behind were superseded."""

    def __init__(self, chat: ChatPort) -> None:
        self.chat = chat

    def waiting(self, chat_id: str) -> list[Deferred]:
        """The chat's deferred commands whose tokens still work."""
        with contextlib.suppress(ValueError, TypeError, KeyError):
            saved = json.loads(self.chat.cursor(DEFERRED + chat_id) or "[]")
            fresh = now_ms() - TOKEN_LIFETIME_MS
            return [Deferred(**d) for d in saved if d["at_ms"] > fresh]
        return []

    def add(self, chat_id: str, deferred: Deferred) -> None:
        self._keep(chat_id, [*self.waiting(chat_id), deferred])

    def drop(self, chat_id: str, deferred: Deferred) -> None:
        self._keep(chat_id, [d for d in self.waiting(chat_id) if d != deferred])

    def answered_by(self, item: OutboxItem) -> tuple[Deferred | None, list[Deferred]]:
        """The command `item` answers, and the older ones it leaves behind."""
        before = [d for d in self.waiting(item.chat_id) if d.at_ms <= item.created_at_ms]
        return (before[-1], before[:-1]) if before else (None, [])

    def settle(self, item: OutboxItem) -> None:
        """`item` is sent: the commands made before it are answered or withdrawn."""
        later = [d for d in self.waiting(item.chat_id) if d.at_ms > item.created_at_ms]
        self._keep(item.chat_id, later)

    def _keep(self, chat_id: str, waiting: list[Deferred]) -> None:
        self.chat.set_cursor(DEFERRED + chat_id, json.dumps([asdict(d) for d in waiting]))


def contained(event: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
    """discord.py's reading of one Gateway event, whose failure is that event's alone."""

    def reading(data: Any) -> None:
        try:
            parse(data)
        except Exception as exc:
            log.warning("discord: a %s event could not be read, passed over (%r)", event, exc)

    return reading


def now_ms() -> int:
    return int(time.time() * 1000)


def nonce(chat_id: str, seq: int, part: int) -> str:
    """At most 25 characters, the same for every try of one part."""
    return f"{zlib.crc32(chat_id.encode()):08x}.{seq}.{part}"[:25]


def text_body(content: str, once: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"content": content, "allowed_mentions": {"parse": []}}
    if once:
        payload |= {"nonce": once, "enforce_nonce": True}
    return payload


def voice_form(
    data: bytes, seconds: float, levels: list[float], once: str | None, voice: bool = True
) -> list[dict[str, Any]]:
    """A voice message (`voice`), or the same audio as an ordinary attachment."""
    attachment: dict[str, Any] = {"id": 0, "filename": "voice-message.ogg"}
    payload: dict[str, Any] = {"attachments": [attachment], "allowed_mentions": {"parse": []}}
    if voice:
        waveform = bytes(min(255, round(level * 255)) for level in levels[:WAVEFORM_POINTS])
        attachment |= {
            "duration_secs": round(seconds, 3),
            "waveform": base64.b64encode(waveform).decode(),
        }
        payload["flags"] = IS_VOICE_MESSAGE
    if once:
        payload |= {"nonce": once, "enforce_nonce": True}
    return [
        {"name": "payload_json", "value": json.dumps(payload)},
        {
            "name": "files[0]",
            "value": data,
            "filename": "voice-message.ogg",
            "content_type": "audio/ogg",
        },
    ]
