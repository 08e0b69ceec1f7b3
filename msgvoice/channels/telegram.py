"""The Telegram channel: Bot API long polling in, sendMessage / sendVoice out.

The getUpdates offset is journalled after each update is handled, so a restart neither replays
nor misses messages. Voice notes go as OGG/Opus 48 kHz mono through sendVoice (a voice bubble,
not a file). 429 waits out `retry_after`; network errors and 5xx back off.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx

from msgvoice.channels.outbox import ChannelError, OutboxPump, prefixed
from msgvoice.chat.port import ChatPort, Incoming, OutboxItem
from msgvoice.config import TelegramConfig
from msgvoice.net import next_backoff
from msgvoice.speech.encoder import AudioError, convert, describe

log = logging.getLogger(__name__)

PREFIX = "tg:"
CURSOR = "telegram.offset"
VOICE_RATE = 48_000


class TelegramChannel:
    """Telegram through the Bot API over one shared httpx client."""

    def __init__(
        self, config: TelegramConfig, chat: ChatPort, *, client: httpx.AsyncClient
    ) -> None:
        self.config, self.chat, self.client = config, chat, client
        self.url = f"{config.base_url.rstrip('/')}/bot{config.token}"
        self.pump = OutboxPump(chat, PREFIX, self._send)

    async def run(self) -> None:
        """Poll for updates and push the outbox until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._poll())
            group.create_task(self.pump.run())

    async def call(
        self,
        method: str,
        files: dict[str, Any] | None = None,
        timeout_s: float = 30.0,
        **params: Any,
    ) -> Any:
        """One Bot API call; ChannelError (with retry_after on 429) when it fails."""
        try:
            if files:
                response = await self.client.post(
                    f"{self.url}/{method}", data=params, files=files, timeout=timeout_s
                )
            else:
                response = await self.client.post(
                    f"{self.url}/{method}", json=params, timeout=timeout_s
                )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChannelError(f"{method}: {type(exc).__name__}: {exc}") from exc
        if body.get("ok"):
            return body.get("result")
        retry = (body.get("parameters") or {}).get("retry_after")
        raise ChannelError(
            f"{method}: {body.get('error_code')} {body.get('description')}",
            float(retry) if retry is not None else None,
        )

    async def _poll(self) -> None:
        offset = int(self.chat.cursor(CURSOR) or 0)
        backoff = 0.0
        while True:
            try:
                updates = await self.call(
                    "getUpdates",
                    offset=offset,
                    timeout=self.config.poll_timeout_s,
                    allowed_updates=["message", "edited_message"],
                    timeout_s=self.config.poll_timeout_s + 10,
                )
            except ChannelError as exc:
                backoff = next_backoff(backoff)
                wait = exc.retry_after_s if exc.retry_after_s is not None else backoff
                log.warning("telegram getUpdates failed, retrying in %.1fs: %s", wait, exc)
                await asyncio.sleep(wait)
                continue
            backoff = 0.0
            for update in updates or []:
                await self._handle(update)
                offset = int(update["update_id"]) + 1
                self.chat.set_cursor(CURSOR, str(offset))

    async def _handle(self, update: dict[str, Any]) -> None:
        message = update.get("message")
        if message is None:
            log.info(
                "telegram update %s ignored: %s",
                update.get("update_id"),
                ", ".join(k for k in update if k != "update_id"),
            )
            return
        chat = f"{PREFIX}{message['chat']['id']}"
        sender = str((message.get("from") or {}).get("id", ""))
        text = message.get("text") or None
        allow = prefixed(self.config.allow, PREFIX)
        outcome = await self.chat.message(Incoming(chat, text, sender, allow))
        if outcome.jobs:
            try:
                await self.call(
                    "sendChatAction", chat_id=message["chat"]["id"], action="record_voice"
                )
            except ChannelError as exc:
                log.info("telegram sendChatAction failed: %s", exc)

    async def _send(self, item: OutboxItem) -> None:
        chat_id = item.chat_id[len(PREFIX) :]
        if item.audio is None:
            await self.call("sendMessage", chat_id=chat_id, text=item.text)
            return
        try:
            voice = await asyncio.to_thread(_voice_note, item.audio)
        except AudioError as exc:
            raise ChannelError(str(exc)) from exc
        params: dict[str, Any] = {"chat_id": chat_id}
        if item.duration_s:
            params["duration"] = str(round(item.duration_s))
        await self.call(
            "sendVoice", files={"voice": (voice.name, voice.read_bytes(), "audio/ogg")}, **params
        )


def _voice_note(source: Path) -> Path:
    """The voice note as Telegram plays it in a bubble: OGG/Opus 48 kHz (converted if need be)."""
    if describe(source) == ("ogg", "opus", VOICE_RATE):
        return source
    return convert(source, "ogg", VOICE_RATE)
