"""The Telegram channel: Bot API long polling in, sendMessage / sendVoice out.

At start `getMe` names the bot, so `/tts@other_bot` in a group is left to the other bot. The
getUpdates offset is journalled after each update is handled, so a restart neither replays nor
misses messages. Only `message` updates are asked for: an edited message is not spoken again.
A message in a forum topic (`is_topic_message`) is its own chat, `tg:<chat>#<thread>`, and its
replies go back to that topic (`message_thread_id`). "Recording voice" is shown while the voice
note is made, resent every 4 s (Telegram shows an action for 5 s). Voice notes go out as
OGG/Opus 48 kHz mono through sendVoice, at most 1 MB each (python-telegram-bot's
VOICE_NOTE_FILE_SIZE: larger ones arrive as files, not voice bubbles): a lower bit rate, or
numbered parts for very long audio.

Errors as the Bot API reports them (`{"ok": false, "error_code", "description",
"parameters"}`): 429 waits out `retry_after`; 5xx and network errors back off; 400 and 403
(chat not found, bot blocked or kicked) refuse that item for good; 401 (and 404, a token the
server does not know) stops the channel with one error naming where the token came from;
409 says whether a webhook is set (deleted once if `delete_webhook`) or another getUpdates
poller runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, NoReturn

import httpx

from msgvoice.channels.outbox import ChannelError, OutboxPump, prefixed, take_in
from msgvoice.chat.port import (
    FINAL_STATES,
    ChatPort,
    Incoming,
    OutboxItem,
    keep_running,
    next_ring,
)
from msgvoice.config import TelegramConfig
from msgvoice.net import next_backoff
from msgvoice.speech.convert import AudioError, fit_voice_note

log = logging.getLogger(__name__)

PREFIX = "tg:"
CURSOR = "telegram.offset"
VOICE_RATE = 48_000
VOICE_NOTE_MAX_BYTES = 1_000_000
ACTION_EVERY_S = 4.0
ACTION_FOR_AT_MOST_S = 600.0


class Unauthorized(ChannelError):
    """The server does not know the token (401, or 404 for the whole bot URL)."""


class Conflict(ChannelError):
    """409: a webhook is set, or another getUpdates poller runs."""


def address(chat_id: str) -> dict[str, Any]:
    """Bot API parameters for a journalled chat id (`tg:<chat>` or `tg:<chat>#<thread>`)."""
    chat, _, thread = chat_id[len(PREFIX) :].partition("#")
    return {"chat_id": chat} | ({"message_thread_id": thread} if thread else {})


class TelegramChannel:
    """Telegram through the Bot API over one shared httpx client."""

    prefix = PREFIX

    def __init__(
        self,
        config: TelegramConfig,
        chat: ChatPort,
        *,
        client: httpx.AsyncClient,
        token_source: str = "telegram.token",
    ) -> None:
        self.config, self.chat, self.client = config, chat, client
        self.token_source = token_source
        self.url = f"{config.base_url.rstrip('/')}/bot{config.token}"
        self.pump = OutboxPump(chat, PREFIX, self._send)
        self.username = ""
        self._actions: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Name the bot, then poll for updates and push the outbox until cancelled; a token
        the server refuses stops the channel (logged once), not the daemon."""
        try:
            await self._identify()
            async with asyncio.TaskGroup() as group:  # intake and delivery: apart
                group.create_task(
                    keep_running("telegram intake", self._poll, stop_on=(Unauthorized,))
                )
                group.create_task(keep_running("telegram delivery", self.pump.run))
        except* Unauthorized as group:
            log.error(
                "telegram channel stopped: the Bot API refused the token from %s (%s); "
                "set a valid token from @BotFather and restart",
                self.token_source,
                group.exceptions[0],
            )
        finally:
            for task in self._actions:
                task.cancel()

    async def call(
        self,
        method: str,
        files: dict[str, Any] | None = None,
        timeout_s: float = 30.0,
        **params: Any,
    ) -> Any:
        """One Bot API call; its result, or the error classified (see the module doc)."""
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
        if not isinstance(body, dict):
            raise ChannelError(f"{method}: HTTP {response.status_code}, not a Bot API answer")
        if body.get("ok"):
            return body.get("result")
        _raise(method, body, response.status_code)

    async def _identify(self) -> None:
        """getMe, retried with back-off while the server cannot be reached."""
        backoff = 0.0
        while not self.username:
            try:
                me = await self.call("getMe")
                self.username = str(me.get("username") or "")
            except Unauthorized:
                raise
            except ChannelError as exc:
                backoff = next_backoff(backoff)
                log.warning("telegram getMe failed, retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
        log.info("telegram bot @%s", self.username)

    async def _poll(self) -> None:
        offset = int(self.chat.cursor(CURSOR) or 0)
        backoff, webhook_deleted = 0.0, False
        while True:
            try:
                updates = await self.call(
                    "getUpdates",
                    offset=offset,
                    timeout=self.config.poll_timeout_s,
                    allowed_updates=["message"],
                    timeout_s=self.config.poll_timeout_s + 10,
                )
            except Conflict as exc:
                if "webhook" in str(exc) and self.config.delete_webhook and not webhook_deleted:
                    log.warning("telegram: a webhook is set; deleting it to poll (%s)", exc)
                    webhook_deleted = True
                    await self._delete_webhook()
                    continue
                backoff = next_backoff(backoff, first_s=5.0)
                log.error("telegram getUpdates conflict, retrying in %.0fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                continue
            except Unauthorized:
                raise
            except ChannelError as exc:
                backoff = next_backoff(backoff)
                wait = exc.retry_after_s if exc.retry_after_s is not None else backoff
                log.warning("telegram getUpdates failed, retrying in %.1fs: %s", wait, exc)
                await asyncio.sleep(wait)
                continue
            backoff = 0.0
            for update in updates or []:
                await take_in(f"telegram update {update.get('update_id')}", self._handle, update)
                offset = int(update["update_id"]) + 1
                self.chat.set_cursor(CURSOR, str(offset))

    async def _delete_webhook(self) -> None:
        try:
            await self.call("deleteWebhook")
        except Unauthorized:
            raise
        except ChannelError as exc:
            log.error("telegram deleteWebhook failed: %s", exc)

    def _is_ours(self, text: str) -> bool:
        """`/cmd@name` is for the bot named; `/cmd` and plain text are for everyone."""
        head = text.split(maxsplit=1)[0] if text.startswith("/") else ""
        _, at, name = head.partition("@")
        return not at or name.lower() == self.username.lower()

    async def _handle(self, update: dict[str, Any]) -> None:
        message = update.get("message")
        if not isinstance(message, dict):
            log.info("telegram update %s ignored: %s", update.get("update_id"), list(update))
            return
        chat = f"{PREFIX}{message['chat']['id']}"
        if message.get("is_topic_message") and message.get("message_thread_id"):
            chat += f"#{message['message_thread_id']}"
        text = message.get("text") or None
        if text is not None and not self._is_ours(text):
            return
        sender = str((message.get("from") or {}).get("id", ""))
        incoming = Incoming(chat, text, sender, prefixed(self.config.allow, PREFIX))
        outcome = await self.chat.message(incoming)
        if outcome.jobs:
            task = asyncio.create_task(self._recording(chat, outcome.jobs))
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)

    async def _recording(self, chat: str, jobs: list[str]) -> None:
        """Show "recording voice" until the chat's voice notes are made (bounded)."""
        with self.chat.bell.listening() as changes, contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACTION_FOR_AT_MOST_S):
                while not all((j := self.chat.job(job)) is None or j.state in FINAL_STATES
                              for job in jobs):  # fmt: skip
                    try:
                        await self.call("sendChatAction", action="record_voice", **address(chat))
                    except ChannelError as exc:
                        log.info("telegram sendChatAction failed: %s", exc)
                    await next_ring(changes, chat.__eq__, ACTION_EVERY_S)

    async def _send(self, item: OutboxItem) -> None:
        where = address(item.chat_id)
        if item.audio is None:
            await self.call("sendMessage", text=item.text, **where)
            return
        try:
            parts = await asyncio.to_thread(
                fit_voice_note, item.audio, VOICE_NOTE_MAX_BYTES, VOICE_RATE
            )
        except AudioError as exc:  # a voice note that cannot be read never will be
            raise ChannelError(str(exc), permanent=True) from exc
        for n, part in enumerate(parts, 1):
            params = dict(where)
            if len(parts) > 1:
                params["caption"] = f"{n}/{len(parts)}"
            elif item.duration_s:
                params["duration"] = str(round(item.duration_s))
            voice = await asyncio.to_thread(Path.read_bytes, part)
            await self.call("sendVoice", files={"voice": (part.name, voice, "audio/ogg")}, **params)


def _raise(method: str, body: dict[str, Any], status: int) -> NoReturn:
    code = body.get("error_code", status)
    why = f"{method}: {code} {body.get('description', '')}".strip()
    if code == 429:
        retry = (body.get("parameters") or {}).get("retry_after")
        raise ChannelError(why, float(retry) if isinstance(retry, int | float) else None)
    if code in (401, 404):
        raise Unauthorized(why, permanent=True)
    if code == 409:
        raise Conflict(why)
    raise ChannelError(why, permanent=code in (400, 403))
