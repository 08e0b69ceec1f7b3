"""Routes chat lines and bot replies: `/tts` to the lane, `/mode` to chat state, replies to the
auto lane per the chat's voice mode. Every reply goes through the chat's outbox."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from msgvoice import commands, replies
from msgvoice.config import Config
from msgvoice.lanes import Lane
from msgvoice.store import Chat, Store
from msgvoice.text import truncate

log = logging.getLogger(__name__)


Answer = Callable[[str, str], Awaitable[str | None]]
"""A responder: (chat id, message) → the bot's answer, or None."""


def fingerprint(text: str) -> str:
    """What a log may say about a user's text: its length and a short hash."""
    return f"len={len(text)} sha={hashlib.sha256(text.encode()).hexdigest()[:8]}"


@dataclass
class Outcome:
    """What a message caused: jobs queued and text replies sent."""

    jobs: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    ignored: bool = False


class OutboxBell:
    """Rings for every chat whose outbox or jobs changed; each listener has its own queue."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[str]] = []

    def subscribe(self) -> asyncio.Queue[str]:
        """A queue that receives the chat id of every change from now on."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        """Stop receiving changes."""
        self._queues.remove(queue)

    def ring(self, chat_id: str) -> None:
        """Tell every listener that `chat_id` changed."""
        for queue in self._queues:
            queue.put_nowait(chat_id)


class Router:
    """The daemon's message router."""

    def __init__(
        self,
        config: Config,
        store: Store,
        lane: Lane,
        bell: OutboxBell,
        *,
        engine: Callable[[], str],
        answer: Answer | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.lane = lane
        self.bell = bell
        self.engine = engine
        self.answer = answer
        self.superseded_at_submit = 0

    @staticmethod
    def allowed(allow: Sequence[str], chat_id: str, sender: str | None) -> bool:
        """An empty allow-list lets everyone in; otherwise the chat or sender must be on it."""
        return not allow or chat_id in allow or (sender is not None and sender in allow)

    async def message(
        self, chat_id: str, line: str, sender: str | None = None, allow: Sequence[str] = ()
    ) -> Outcome:
        """Handle one chat line."""
        if not self.allowed(allow, chat_id, sender):
            log.warning(
                "ignored message from chat=%s sender=%s: not on the allow-list", chat_id, sender
            )
            return Outcome(ignored=True)
        command = commands.parse(line)
        log.info(
            "message chat=%s command=%s %s", chat_id, type(command).__name__, fingerprint(line)
        )
        self._follow_language(chat_id, command)
        if isinstance(command, commands.Speak):
            chat = self.store.chat(chat_id)
            return Outcome(jobs=[self._queue(chat, "tts", command.text, command.style)])
        if isinstance(command, commands.PlainText):
            return await self._converse(chat_id, command.text)
        return Outcome(replies=[self.say(chat_id, self._settings_reply(chat_id, command))])

    def _follow_language(self, chat_id: str, command: commands.Command) -> None:
        """Remember the language the chat writes in (replies follow it). Only what people say
        counts (plain messages, style descriptions), not text to speak or voice names."""
        self.store.touch_chat(chat_id)
        said = (
            command.text
            if isinstance(command, commands.PlainText)
            else (command.style if isinstance(command, commands.SetStyle) else None)
        )
        lang = replies.detect(said) if said else None
        if lang is not None and lang != self.store.chat(chat_id).lang:
            self.store.update_chat(chat_id, lang=lang)

    def _change(self, chat_id: str, command: commands.Command, lang: str) -> str | None:
        """Apply a settings command; its confirmation, or None if it is not one."""
        if isinstance(command, commands.SetVoiceMode):
            self.store.update_chat(chat_id, voice_mode=command.mode)
            mode = replies.text(f"mode.{command.mode}", lang)
            return replies.text("voice_mode_set", lang, mode=mode)
        if isinstance(command, commands.SetStyle):
            self.store.update_chat(chat_id, style=command.style)
            if command.style:
                return replies.text("style_set", lang, style=command.style)
            return replies.text("style_cleared", lang)
        if isinstance(command, commands.SetSpeaker):
            self.store.update_chat(chat_id, speaker=command.speaker)
            if command.speaker:
                return replies.text("speaker_set", lang, speaker=command.speaker)
            return replies.text("speaker_cleared", lang)
        return None

    def _settings_reply(self, chat_id: str, command: commands.Command) -> str:
        chat = self.store.chat(chat_id)
        changed = self._change(chat_id, command, chat.lang)
        if changed is not None:
            return changed
        if isinstance(command, commands.ShowMode):
            shown = replies.text(
                "show_mode",
                chat.lang,
                mode=replies.text(f"mode.{chat.voice_mode}", chat.lang),
                style=chat.style or replies.text("no_style", chat.lang),
                engine=self.engine(),
            )
            if chat.speaker:
                shown += replies.text("show_speaker", chat.lang, speaker=chat.speaker)
            return shown
        if isinstance(command, commands.Help):
            return replies.text("help", chat.lang)
        if isinstance(command, commands.Usage):
            return replies.text(command.key, chat.lang)
        assert isinstance(command, commands.Unknown)
        return replies.text("unknown", chat.lang, name=command.name)

    async def _converse(self, chat_id: str, text: str) -> Outcome:
        if self.answer is None or not text:
            return Outcome()
        answer = await self.answer(chat_id, text)
        return self.bot_reply(chat_id, answer) if answer else Outcome()

    def bot_reply(self, chat_id: str, text: str) -> Outcome:
        """A bot's reply to a chat, voiced per the chat's mode (text first in `both`)."""
        chat = self.store.chat(chat_id)
        if chat.voice_mode == "text":
            return Outcome(replies=[self.say(chat_id, text)])
        placeholder = replies.text("placeholder", chat.lang)
        first = self.say(chat_id, text if chat.voice_mode == "both" else placeholder)
        job = self._queue(chat, "auto", truncate(text, self.config.auto.max_chars))
        return Outcome(jobs=[job], replies=[first])

    def _queue(self, chat: Chat, kind: str, text: str, style: str | None = None) -> str:
        """Journal and queue a job in the chat's style (unless given one) and voice."""
        chat_id = chat.chat_id
        job_id, superseded = self.store.add_job(
            chat_id, kind, text, style or chat.style, chat.speaker
        )
        self.superseded_at_submit += len(superseded)
        for old in superseded:
            log.info("job %s superseded by %s in chat=%s before it ran", old, job_id, chat_id)
        self.lane.submit(job_id)
        self.bell.ring(chat_id)
        return job_id

    def say(self, chat_id: str, text: str) -> str:
        """Send a text to a chat (through its outbox)."""
        self.store.add_text(chat_id, text)
        self.bell.ring(chat_id)
        return text
