"""The Feishu / Lark channel: a custom app's bot, events through the long connection (no
public URL needed: a laptop or a Mac works), replies through the REST API (lark_api.py).

Not through lark-oapi, after reading it (1.7.5): `import lark_oapi` takes 4.4 s and imports its
long-connection client, which takes an event loop at import time and runs its connection with
`loop.run_until_complete` and a blocking `requests` call, so it cannot run inside msgvoice's
own loop. The protocol it speaks is small: its frames (pbbp2.Frame, built here from the same
descriptor with the protobuf package, byte-identical) over aiohttp, and JSON over httpx.

Intake: `im.message.receive_v1` from private chats and groups (in groups Feishu delivers only
messages that @ the bot unless the app holds the group-message scope; without the @ a group
message must be a command). Each event is answered at once (Feishu pushes an unanswered one
again) and handled in turn; its event_id is remembered, so one pushed twice is answered once.
A chat is `feishu:<chat_id>`; the allow-list takes open_ids and chat ids. The connection is
pinged every PingInterval (the endpoint's ClientConfig, updated by pongs), and made again,
with a growing back-off, when it closes or stays silent for two intervals. App credentials
Feishu refuses stop the channel with one line; a tenant token is renewed before it expires.

Delivery: a voice note is uploaded as `file_type` opus with its duration in ms and sent as
`msg_type` audio (Feishu's voice bubble); texts as `text` in parts over TEXT_LIMIT; each send
carries a uuid made of the chat and the item's place, so a retry posts once. Errors: lark_api.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import httpx

from msgvoice.channels.intake import InOrder, Recent, addressed, prefixed
from msgvoice.channels.lark_api import (
    CONTROL,
    DATA,
    PREFIX,
    TEXT_LIMIT,
    Api,
    CredentialsRefused,
    Frame,
    acknowledged,
    headers_of,
    ping,
)
from msgvoice.channels.outbox import ChannelError, OutboxPump, PartsOnce, serve, wait_out
from msgvoice.channels.telegram_api import split_text
from msgvoice.chat.port import ChatPort, OutboxItem
from msgvoice.config import FeishuConfig
from msgvoice.speech.convert import AudioError, fit_voice_note, levels

log = logging.getLogger(__name__)
UPLOAD_MAX = 30 * 1024 * 1024
"""Feishu's file upload limit."""
VOICE_RATE = 48_000


class FeishuChannel:
    """One app's bot over one long connection."""

    prefix = PREFIX

    def __init__(self, config: FeishuConfig, chat: ChatPort, client: httpx.AsyncClient) -> None:
        self.config, self.chat = config, chat
        self.api = Api(client, config.domain, config.app_id, config.app_secret)
        self.pump = OutboxPump(chat, PREFIX, self._send)
        self.allow = prefixed(config.allow, PREFIX)
        self.me = ""
        self._ping_s = 120.0
        """The connection's ping interval: the endpoint's ClientConfig, then its pongs'."""
        self._inbox: InOrder[dict[str, Any]] = InOrder(self._take)
        self._seen = Recent()
        self._fragments: dict[str, list[bytes]] = {}
        self._parts = PartsOnce()

    async def run(self) -> None:
        """Connect, then take events and push the outbox until cancelled."""
        try:
            await serve("feishu", self._intake, self.pump.run, (CredentialsRefused,))
        except* CredentialsRefused as group:
            log.error(
                "feishu channel stopped: the app's credentials were refused (%s); set "
                "feishu.app_id and feishu.app_secret (developer console → Credentials) and "
                "restart",
                group.exceptions[0],
            )

    async def _intake(self) -> None:
        async with aiohttp.ClientSession() as session:
            await self._inbox.beside(self._connect(session))

    async def _connect(self, session: aiohttp.ClientSession) -> None:
        backoff = 0.0
        while True:
            try:
                if not self.me:
                    self.me = str((await self.api.bot()).get("open_id", ""))
                url, self._ping_s = await self.api.endpoint()
                service = int(parse_qs(urlparse(url).query)["service_id"][0])
                async with session.ws_connect(url, heartbeat=None, max_msg_size=0) as ws:
                    log.info("feishu: connected (bot %s)", self.me)
                    backoff = 0.0
                    problem = ChannelError(f"connection lost: {await self._serve(ws, service)}")
            except aiohttp.WSServerHandshakeError as exc:
                said: Any = exc.headers or {}
                status = str(said.get("handshake-status", ""))
                message = str(said.get("handshake-msg", exc.message))
                if status == "403":
                    raise CredentialsRefused(f"handshake 403: {message}") from exc
                problem = ChannelError(f"handshake refused ({exc.status} {status}): {message}")
            except (KeyError, ValueError) as exc:
                problem = ChannelError(f"the endpoint's URL cannot be used: {exc}")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                problem = ChannelError(f"cannot connect: {type(exc).__name__}: {exc}")
            except ChannelError as exc:
                problem = exc
            backoff = await wait_out("feishu", problem, backoff)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse, service: int) -> str:
        """Ping, read and answer one connection until it ends; returns why."""

        async def pinging() -> None:
            while True:
                with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                    await ws.send_bytes(ping(service))  # a dead connection: the reader says
                await asyncio.sleep(self._ping_s)

        pinger = asyncio.create_task(pinging())
        try:
            while True:
                quiet = self._ping_s * 2 + 5.0
                try:
                    message = await ws.receive(timeout=quiet)
                except TimeoutError:
                    return f"nothing heard for {quiet:.0f}s"
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return f"closed ({ws.close_code})"
                if message.type is aiohttp.WSMsgType.ERROR:
                    return f"failed ({ws.exception()})"
                if message.type is aiohttp.WSMsgType.BINARY:
                    answer = self._frame(message.data)
                    if answer is not None:
                        await ws.send_bytes(answer)
        finally:
            pinger.cancel()

    def _frame(self, data: bytes) -> bytes | None:
        """One frame read: a pong may set the ping interval; an event (its parts joined) is
        queued and answered. A frame that cannot be read is passed over with a line."""
        started = time.monotonic()
        frame = Frame()
        try:
            frame.ParseFromString(data)
        except Exception:  # protobuf's DecodeError, or a frame missing required fields
            log.warning("feishu: a frame that cannot be read was passed over (%d bytes)", len(data))
            return None
        head = headers_of(frame)
        if frame.method == CONTROL:
            if head.get("type") == "pong" and frame.payload:
                with contextlib.suppress(ValueError, AttributeError):
                    given = json.loads(frame.payload).get("PingInterval")
                    if isinstance(given, int | float) and given >= 1:
                        self._ping_s = float(given)
            return None
        if frame.method != DATA or head.get("type") != "event":
            return None
        payload = self._joined(head, bytes(frame.payload))
        if payload is not None:
            try:
                event = json.loads(payload)
            except ValueError:
                log.warning("feishu: an event that is not JSON was passed over")
                event = None
            if isinstance(event, dict):
                header: Any = event.get("header")
                event_id = header.get("event_id") if isinstance(header, dict) else "?"
                self._inbox.put(f"feishu event {event_id}", event)
        return acknowledged(frame, int((time.monotonic() - started) * 1000))

    def _joined(self, head: dict[str, str], payload: bytes) -> bytes | None:
        """An event's payload once all its parts are in (sum > 1), else None."""
        try:
            total, seq = int(head.get("sum", "1")), int(head.get("seq", "0"))
        except ValueError:
            return payload
        if total <= 1:
            return payload
        parts = self._fragments.setdefault(head.get("message_id", ""), [b""] * total)
        if 0 <= seq < len(parts):
            parts[seq] = payload
        if not all(parts):
            return None
        self._fragments.pop(head.get("message_id", ""), None)
        return b"".join(parts)

    async def _take(self, event: dict[str, Any]) -> None:
        header, body = event.get("header"), event.get("event")
        if not isinstance(header, dict) or not isinstance(body, dict):
            return
        if header.get("event_type") != "im.message.receive_v1":
            return
        if header.get("event_id") and self._seen.again(str(header["event_id"])):
            return
        message, sender = body.get("message"), body.get("sender")
        if not isinstance(message, dict) or not isinstance(sender, dict):
            return
        chat = message.get("chat_id")
        ids = sender.get("sender_id")
        who = ids.get("open_id") if isinstance(ids, dict) else None
        if not isinstance(chat, str) or not chat or sender.get("sender_type") != "user":
            return
        text, mentioned = _read(message, self.me)
        group = message.get("chat_type") != "p2p"
        incoming = addressed(PREFIX + chat, text, who, self.allow, group=group, mentioned=mentioned)
        if incoming is not None:
            await self.chat.message(incoming)

    async def _send(self, item: OutboxItem) -> None:
        chat = item.chat_id.removeprefix(PREFIX)
        parts: list[Any]
        if item.audio is None:
            parts = [("text", {"text": t}) for t in split_text(item.text or "", TEXT_LIMIT)]
        else:
            try:
                parts = await asyncio.to_thread(fit_voice_note, item.audio, UPLOAD_MAX, VOICE_RATE)
            except AudioError as exc:
                raise ChannelError(str(exc), permanent=True) from exc

        async def one(n: int, part: Any) -> None:
            uuid = hashlib.sha256(f"{item.chat_id}#{item.seq}#{n}".encode()).hexdigest()[:40]
            if item.audio is None:
                kind, content = part
            else:
                seconds, _ = await asyncio.to_thread(levels, part, 1)
                data = await asyncio.to_thread(part.read_bytes)
                kind = "audio"
                content = {"file_key": await self.api.upload_voice(data, round(seconds * 1000))}
            await self.api.send(chat, kind, content, uuid)

        await self._parts.send(item, parts, one)


def _read(message: dict[str, Any], me: str) -> tuple[str | None, bool]:
    """A message's text, the bot's @ taken out and other people's shown by name, and whether
    it @-mentions the bot; None for what is not text (a voice note, a picture)."""
    if message.get("message_type") != "text":
        return None, False
    try:
        content = json.loads(message.get("content") or "{}")
    except ValueError:
        return None, False
    text = str(content.get("text", "")) if isinstance(content, dict) else ""
    mentioned = False
    for mention in message.get("mentions") or []:
        if not isinstance(mention, dict):
            continue
        key = str(mention.get("key", ""))
        ours = me and (mention.get("id") or {}).get("open_id") == me
        mentioned = mentioned or bool(ours)
        if key:
            text = text.replace(key, "" if ours else f"@{mention.get('name', '')}")
    return text.strip() or None, mentioned
