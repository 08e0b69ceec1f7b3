"""The QQ channel: a OneBot v11 implementation (NapCat, Lagrange.OneBot, LLOneBot) logged in
as the bot's QQ account, reached through its forward WebSocket (onebot_api.py). No client
library: the OneBot SDKs on PyPI (nonebot-adapter-onebot, aiocqhttp) are bot frameworks with
their own event loops and plugin systems, and the protocol is a few JSON shapes over aiohttp.

Intake: private messages, and group messages that @ the bot or start with `/` (in both of
OneBot's message formats, array and CQ string); the @ is taken off. A private chat is
`qq:user:<number>`, a group `qq:group:<number>` (settings are per group); the allow-list takes
QQ numbers and `group:<number>`. The bot's own messages and QQ's system notices are not
answered. The connection is dropped and made again (with a growing back-off) when it closes,
when pings go unanswered, or when the implementation's heartbeat (meta_event, every
`interval` ms) is overdue by more than twice its interval and a second. A message's id is
remembered for a while, so one pushed again on a new connection is not answered twice.
OneBot keeps nothing for a client that is not connected (NapCat pushes each event to the
connections open at that moment), so what QQ brings while msgvoice is down is not answered.

Delivery: texts as `text` segments (in numbered parts over TEXT_LIMIT); voice notes as
`record` segments of SILK v3 (24 kHz, Tencent's header), which every implementation passes to
QQ as they are; other formats it would convert itself, NapCat only through its own ffmpeg
build, Lagrange and LLOneBot through a system ffmpeg. A note over a minute goes in parts cut at
quiet moments. Each part of an item is sent once, even when a later one is retried.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from msgvoice.channels.intake import InOrder, Recent, addressed, prefixed
from msgvoice.channels.onebot_api import (
    GROUP,
    PREFIX,
    TEXT_LIMIT,
    VOICE_MAX_S,
    Link,
    LoginRefused,
    chat_of,
    connected,
    number,
    read,
    record_message,
    route,
    target,
    text_message,
)
from msgvoice.channels.outbox import ChannelError, OutboxPump, PartsOnce, serve, wait_out
from msgvoice.channels.telegram_api import split_text
from msgvoice.chat.port import ChatPort, OutboxItem
from msgvoice.config import QqConfig
from msgvoice.speech.convert import AudioError, silk_notes

log = logging.getLogger(__name__)
HEARTBEAT_GRACE = 2.0
"""Heartbeat intervals without a frame before the connection counts as hung."""


class QqChannel:
    """One QQ account through one OneBot connection."""

    prefix = PREFIX

    def __init__(self, config: QqConfig, chat: ChatPort) -> None:
        self.config, self.chat = config, chat
        self.pump = OutboxPump(chat, PREFIX, self._send)
        self.allow = prefixed(config.allow, PREFIX)
        self.link: Link | None = None
        self.me = ""
        self._heartbeat_s: float | None = None
        self._inbox: InOrder[dict[str, Any]] = InOrder(self._take)
        self._seen = Recent()
        self._parts = PartsOnce()

    async def run(self) -> None:
        """Connect, then take events and push the outbox until cancelled."""
        try:
            await serve("qq", self._intake, self.pump.run, (LoginRefused,))
        except* LoginRefused as group:
            log.error(
                "qq channel stopped: %s at %s; set qq.access_token to the token of its "
                "forward WebSocket server and restart",
                group.exceptions[0],
                self.config.url,
            )

    async def _intake(self) -> None:
        async with aiohttp.ClientSession() as session:
            await self._inbox.beside(self._connect(session))

    async def _connect(self, session: aiohttp.ClientSession) -> None:
        """Connected again after every loss, with a growing back-off (a connection that
        got as far as the bot's account starts it afresh)."""
        backoff = 0.0
        while True:
            try:
                async with connected(session, self.config.url, self.config.access_token) as ws:
                    why = await self._serve_connection(ws)
                    if self.me:
                        backoff = 0.0
                    problem = ChannelError(f"connection lost: {why}")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                problem = ChannelError(f"cannot connect to {self.config.url}: {exc}")
            finally:
                self.link, self.me, self._heartbeat_s = None, "", None
            backoff = await wait_out("qq", problem, backoff)

    async def _serve_connection(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Read one connection until it ends; meanwhile learn whose account it is."""
        link = Link(ws, self.config.request_timeout_s)
        reader = asyncio.create_task(route(ws, link, self._heard, self._quiet_s))
        try:
            me = await link.call("get_login_info", {})
            self.me = (number(me.get("user_id")) if isinstance(me, dict) else None) or ""
            self.link = link
            log.info("qq: connected to %s as %s", self.config.url, self.me)
            self.chat.bell.ring(PREFIX)  # what waited for a connection goes now
            return await reader
        except ChannelError as exc:
            if reader.done():
                return await reader  # its reason (or LoginRefused) says more
            return str(exc)
        finally:
            reader.cancel()

    def _quiet_s(self) -> float | None:
        """How long the connection may stay silent: None (pings alone) until a heartbeat
        has said its interval."""
        return None if self._heartbeat_s is None else self._heartbeat_s * HEARTBEAT_GRACE + 1.0

    def _heard(self, event: dict[str, Any]) -> None:
        if event.get("post_type") == "meta_event":
            interval = event.get("interval")
            if event.get("meta_event_type") == "heartbeat" and isinstance(interval, int | float):
                self._heartbeat_s = max(interval / 1000, 0.1)
            return
        if event.get("post_type") == "message":
            self._inbox.put(f"qq message {event.get('message_id')}", event)

    async def _take(self, event: dict[str, Any]) -> None:
        chat, sender = chat_of(event), number(event.get("user_id"))
        if chat is None or not sender or sender == self.me or event.get("sub_type") == "notice":
            return
        message_id = event.get("message_id")
        if message_id is not None and self._seen.again((chat, str(message_id))):
            return
        text, mentioned = read(event.get("message"), self.me)
        group = chat.startswith(PREFIX + GROUP)
        incoming = addressed(chat, text, sender, self.allow, group=group, mentioned=mentioned)
        if incoming is not None:
            await self.chat.message(incoming)

    async def _send(self, item: OutboxItem) -> None:
        link = self.link
        if link is None:
            raise ChannelError("qq: not connected")
        action, address = target(item.chat_id)
        if item.audio is None:
            texts = split_text(item.text or "", TEXT_LIMIT)
            messages = [text_message(text) for text in texts]
        else:
            try:
                notes = await asyncio.to_thread(silk_notes, item.audio, VOICE_MAX_S)
            except AudioError as exc:  # a voice note that cannot be read never will be
                raise ChannelError(str(exc), permanent=True) from exc
            messages = [record_message(silk) for silk, _ in notes]

        async def one(_: int, message: list[dict[str, Any]]) -> None:
            await link.call(action, {**address, "message": message})

        await self._parts.send(item, messages, one)
