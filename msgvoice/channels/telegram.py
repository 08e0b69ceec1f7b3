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

A group upgraded to a supergroup gets a new id (the Bot API says so in a 400's
`migrate_to_chat_id`, and in a service message): the chat's settings follow, and everything for
the old id goes to the new one. A text longer than a message goes in numbered parts, a user who
forbids voice messages gets the voice note as a file (remembered per chat), and each part of a
long text or voice note is sent once, even when a later part is retried. Service messages
(joins, pins, topics, migrations) and channel posts forwarded into a group are not answered;
in groups, a command that is not ours (or anything but text) is another bot's. The errors and
how each is handled: telegram_api.py. The offset is kept within Telegram's own 24-hour
retention of updates: a daemon down longer than that misses what Telegram dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import httpx

from msgvoice.channels.intake import prefixed, take_in
from msgvoice.channels.outbox import ChannelError, OutboxPump, PartsOnce, serve, wait_out
from msgvoice.channels.telegram_api import (
    CONTENT,
    GROUPS,
    PREFIX,
    BotApi,
    ChatMigrated,
    Conflict,
    Unauthorized,
    VoiceForbidden,
    address,
    migration,
    split_text,
)
from msgvoice.chat.port import (
    FINAL_STATES,
    ChatPort,
    Incoming,
    OutboxItem,
    next_ring,
)
from msgvoice.config import TelegramConfig
from msgvoice.net import next_backoff
from msgvoice.speech.convert import AudioError, fit_voice_note

log = logging.getLogger(__name__)

CURSOR = "telegram.offset"
MOVED = "telegram.moved:"
"""Cursor prefix: an old group id → the supergroup it became."""
NO_VOICE = "telegram.no_voice:"
"""Cursor prefix: a chat whose user forbids voice messages."""
VOICE_RATE = 48_000
VOICE_NOTE_MAX_BYTES = 1_000_000
ACTION_EVERY_S, ACTION_FOR_AT_MOST_S = 4.0, 600.0


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
        self.config, self.chat = config, chat
        self.token_source = token_source
        self.api = BotApi(client, config.base_url, config.token)
        self.call = self.api.call
        self.pump = OutboxPump(chat, PREFIX, self._send)
        self.username = ""
        self._actions: set[asyncio.Task[None]] = set()
        self._parts = PartsOnce()
        """Parts of a multi-part item already delivered, so a retry sends only the rest."""

    async def run(self) -> None:
        """Name the bot, then poll for updates and push the outbox until cancelled; a token
        the server refuses stops the channel (logged once), not the daemon."""
        try:
            await self._identify()
            await serve("telegram", self._poll, self.pump.run, (Unauthorized,))
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
                backoff = await wait_out("telegram getUpdates", exc, backoff)
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
        if moved := migration(chat, message):
            self._migrated(*moved)
            return
        if not CONTENT.intersection(message) or message.get("is_automatic_forward"):
            return  # a service message, or a channel's post shown in its discussion group
        if message.get("is_topic_message") and message.get("message_thread_id"):
            chat += f"#{message['message_thread_id']}"
        text = message.get("text") or message.get("caption") or None
        if text is not None and not self._is_ours(text):
            return
        sender = message.get("sender_chat") or message.get("from") or {}  # anonymous admins
        group = message["chat"].get("type") in GROUPS
        allow = prefixed(self.config.allow, PREFIX)
        outcome = await self.chat.message(
            Incoming(chat, text, str(sender.get("id", "")), allow, group)
        )
        if outcome.jobs:
            task = asyncio.create_task(self._recording(chat, outcome.jobs))
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)

    def _migrated(self, old: str, new: str) -> None:
        """A group became a supergroup: its settings follow, its pending items go to `new`."""
        if self.chat.cursor(MOVED + old) != new:
            log.info("telegram chat %s is now %s (upgraded to a supergroup)", old, new)
            self.chat.move_chat(old, new)
            self.chat.set_cursor(MOVED + old, new)

    def _where(self, chat_id: str) -> dict[str, Any]:
        """Where a chat's items go now (a migrated group's go to its supergroup)."""
        return address(self.chat.cursor(MOVED + chat_id) or chat_id)

    async def _recording(self, chat: str, jobs: list[str]) -> None:
        """Show "recording voice" every ACTION_EVERY_S until the voice notes are made."""
        due, clock = 0.0, asyncio.get_running_loop().time
        action = {"action": "record_voice", **address(chat)}
        with self.chat.bell.listening() as changes, contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACTION_FOR_AT_MOST_S):
                while not all((j := self.chat.job(job)) is None or j.state in FINAL_STATES
                              for job in jobs):  # fmt: skip
                    if clock() >= due:
                        due = clock() + ACTION_EVERY_S
                        with contextlib.suppress(ChannelError):  # a hint: not worth a retry
                            await self.call("sendChatAction", **action)
                    await next_ring(changes, chat.__eq__, due - clock())  # or when one is made

    async def _send(self, item: OutboxItem) -> None:
        try:
            await self._deliver(item)
        except ChatMigrated as exc:  # resend at once to the new id, the rest follows it there
            self._migrated(item.chat_id, f"{PREFIX}{exc.new_id}")
            await self._deliver(item)

    async def _deliver(self, item: OutboxItem) -> None:
        where = self._where(item.chat_id)
        if item.audio is None:
            texts = split_text(item.text or "")
            await self._parts.send(
                item, texts, lambda _, text: self.call("sendMessage", text=text, **where)
            )
            return
        try:
            parts = await asyncio.to_thread(
                fit_voice_note, item.audio, VOICE_NOTE_MAX_BYTES, VOICE_RATE
            )
        except AudioError as exc:  # a voice note that cannot be read never will be
            raise ChannelError(str(exc), permanent=True) from exc

        async def one(n: int, part: Path) -> None:
            params = dict(where)
            if len(parts) > 1:
                params["caption"] = f"{n + 1}/{len(parts)}"
            elif item.duration_s:
                params["duration"] = str(round(item.duration_s))
            await self._voice(item.chat_id, part, params)

        try:
            await self._parts.send(item, parts, one)
        except ChannelError as exc:  # not even as a file: the words, at least
            job = self.chat.job(item.job_id) if item.job_id else None
            if not (exc.permanent and job and self.chat.cursor(NO_VOICE + item.chat_id)):
                raise
            log.info(
                "telegram chat %s takes no audio file either (%s); sending text", item.chat_id, exc
            )
            await self._parts.send(
                item, split_text(job.text), lambda _, t: self.call("sendMessage", text=t, **where)
            )

    async def _voice(self, chat_id: str, part: Path, params: dict[str, Any]) -> None:
        """A voice note, or the same audio as a file for a user who forbids voice messages."""
        audio = await asyncio.to_thread(Path.read_bytes, part)
        if not self.chat.cursor(NO_VOICE + chat_id):
            try:
                await self.call(
                    "sendVoice", files={"voice": (part.name, audio, "audio/ogg")}, **params
                )
                return
            except VoiceForbidden:
                log.info("telegram chat %s forbids voice messages; sending files", chat_id)
                self.chat.set_cursor(NO_VOICE + chat_id, "1")
        params.pop("duration", None)
        await self.call(
            "sendDocument", files={"document": (part.name, audio, "audio/ogg")}, **params
        )
