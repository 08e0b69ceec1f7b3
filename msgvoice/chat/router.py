"""Routes chat lines and bot replies: `/tts` to the lane, `/mode` to chat state, replies to the
auto lane per the chat's voice mode. Every reply goes through the chat's outbox. The router is
the chat wing's `ChatPort`: channels call nothing else."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection

from msgvoice.chat import commands, phrasebook
from msgvoice.chat.asks import Answer, Conversations
from msgvoice.chat.journal import Chat, Journal
from msgvoice.chat.lane import Lane
from msgvoice.chat.port import Bell, Incoming, Job, OutboxItem, Outcome, allowed, bad_id
from msgvoice.chat.storage import Storage
from msgvoice.config import Config
from msgvoice.speech.speaker import exhausted
from msgvoice.speech.text import speakable, truncate

log = logging.getLogger(__name__)


VOICES_SHOWN = 30
ActiveEngine = Callable[[], tuple[str, str | None]]
"""The engine in use, and the main engine when that one is a fallback."""


def fingerprint(text: str) -> str:
    """What a log may say about a user's text: its length and a short hash."""
    return f"len={len(text)} sha={hashlib.sha256(text.encode()).hexdigest()[:8]}"


class Router:
    """The daemon's message router."""

    def __init__(
        self,
        config: Config,
        journal: Journal,
        lane: Lane,
        *,
        engine: ActiveEngine,
        storage: Storage | None = None,
        voices: Callable[[], list[str]] = list,
        voice_named: Callable[[str], str | None] = lambda name: name,
        answer: Answer | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.lane = lane
        self.bell: Bell = journal.bell
        self.engine = engine
        self.storage = storage
        self.voices, self.voice_named = voices, voice_named
        """The engine's voice names, and its spelling of one (None: it has no such voice)."""
        self.conversations = (
            Conversations(journal, answer, self.bot_reply, storage) if answer else None
        )
        """Ordinary messages for the responder, answered off the intake path (asks.py)."""
        self.superseded_at_submit = 0
        self.refused = 0
        """Outbox items the chat apps refused for good (blocked, kicked, unknown chat)."""

    def _admitted(self, incoming: Incoming) -> bool:
        """Ids that are fit to journal, and a chat or sender on the allow-list."""
        for field, value in (("chat_id", incoming.chat_id), ("sender", incoming.sender or "-")):
            if (why := bad_id(value)) is not None:
                log.warning("message rejected: its %s %s (%r)", field, why, value[:80])
                return False
        if not allowed(incoming.allow, incoming.chat_id, incoming.sender):
            log.warning(
                "ignored message from chat=%s sender=%s: not on the allow-list",
                incoming.chat_id,
                incoming.sender,
            )
            return False
        return True

    async def message(self, incoming: Incoming) -> Outcome:
        """Handle one chat message."""
        chat_id, line = incoming.chat_id, incoming.text
        command = commands.parse(line) if line is not None else None
        if not self._admitted(incoming) or not _for_us(incoming, command):
            return Outcome(ignored=True)
        if line is None or command is None:
            return Outcome(replies=[self._say(chat_id, self.phrase(chat_id, "text_only"))])
        log.info(
            "message chat=%s command=%s %s", chat_id, type(command).__name__, fingerprint(line)
        )
        if self.storage_full() is not None:
            return Outcome(replies=[self._say(chat_id, self.phrase(chat_id, "storage_full"))])
        self._follow_language(chat_id, command)
        if isinstance(command, commands.Speak):
            chat = self.journal.chat(chat_id)
            return Outcome(jobs=[self._queue(chat, "tts", command.text, command.style)])
        if isinstance(command, commands.PlainText):
            return await self._converse(chat_id, command.text)
        return Outcome(replies=[self._say(chat_id, self._settings_reply(chat_id, command))])

    def _follow_language(self, chat_id: str, command: commands.Command) -> None:
        """Remember the language the chat writes in (replies follow it). Only what people say
        counts (plain messages, style descriptions), not text to speak or voice names."""
        self.journal.touch_chat(chat_id)
        said = (
            command.text
            if isinstance(command, commands.PlainText)
            else (command.style if isinstance(command, commands.SetStyle) else None)
        )
        lang = phrasebook.detect(said) if said else None
        if lang is not None and lang != self.journal.chat(chat_id).lang:
            self.journal.update_chat(chat_id, lang=lang)

    def _change(self, chat_id: str, command: commands.Command, lang: str) -> str | None:
        """Apply a settings command; its confirmation, or None if it is not one."""
        if isinstance(command, commands.SetVoiceMode):
            self.journal.update_chat(chat_id, voice_mode=command.mode)
            mode = phrasebook.text(f"mode.{command.mode}", lang)
            return phrasebook.text("voice_mode_set", lang, mode=mode)
        if isinstance(command, commands.SetStyle):
            self.journal.update_chat(chat_id, style=command.style)
            if command.style:
                return phrasebook.text("style_set", lang, style=command.style)
            return phrasebook.text("style_cleared", lang)
        if isinstance(command, commands.SetSpeaker):
            return self._set_speaker(chat_id, command.speaker, lang)
        return None

    def _set_speaker(self, chat_id: str, speaker: str | None, lang: str) -> str:
        """Choose the chat's voice; a name the engine lacks is answered with the list."""
        spelt = self.voice_named(speaker) if speaker else None
        if speaker and spelt is None:
            known = self.voices()
            listed = ", ".join(known[:VOICES_SHOWN]) + ("…" if len(known) > VOICES_SHOWN else "")
            return phrasebook.text("speaker_unknown", lang, speaker=speaker, voices=listed)
        speaker = spelt
        self.journal.update_chat(chat_id, speaker=speaker)
        if speaker:
            return phrasebook.text("speaker_set", lang, speaker=speaker)
        return phrasebook.text("speaker_cleared", lang)

    def _settings_reply(self, chat_id: str, command: commands.Command) -> str:
        chat = self.journal.chat(chat_id)
        changed = self._change(chat_id, command, chat.lang)
        if changed is not None:
            return changed
        if isinstance(command, commands.ShowMode):
            engine, main = self.engine()
            if main is not None:
                engine = phrasebook.text("engine_fallback", chat.lang, engine=engine, main=main)
            shown = phrasebook.text(
                "show_mode",
                chat.lang,
                mode=phrasebook.text(f"mode.{chat.voice_mode}", chat.lang),
                style=chat.style or phrasebook.text("no_style", chat.lang),
                engine=engine,
            )
            if chat.speaker:
                shown += phrasebook.text("show_speaker", chat.lang, speaker=chat.speaker)
            return shown
        if isinstance(command, commands.Help):
            greeting = phrasebook.text("greeting", chat.lang) + "\n" if command.greet else ""
            return greeting + phrasebook.text("help", chat.lang)
        if isinstance(command, commands.Usage):
            return phrasebook.text(command.key, chat.lang, max=str(commands.STYLE_MAX_CHARS))
        assert isinstance(command, commands.Unknown)
        return phrasebook.text("unknown", chat.lang, name=command.name)

    async def _converse(self, chat_id: str, text: str) -> Outcome:
        if self.conversations is not None and text:
            self.conversations.ask(chat_id, text)  # answered as the bot's reply, later
        return Outcome()

    def bot_reply(self, chat_id: str, text: str) -> Outcome:
        """A bot's reply to a chat, voiced per the chat's mode (text first in `both`)."""
        chat = self.journal.chat(chat_id)
        if chat.voice_mode == "text" or not speakable(text):  # nothing to voice: text it is
            return Outcome(replies=[self._say(chat_id, text)])
        placeholder = phrasebook.text("placeholder", chat.lang)
        first = self._say(chat_id, text if chat.voice_mode == "both" else placeholder)
        job = self._queue(chat, "auto", truncate(text, self.config.auto.max_chars))
        return Outcome(jobs=[job], replies=[first])

    def _queue(self, chat: Chat, kind: str, text: str, style: str | None = None) -> str:
        """Journal and queue a job in the chat's style (unless given one) and voice."""
        chat_id = chat.chat_id
        job_id, superseded = self.journal.add_job(
            chat_id, kind, text, style or chat.style, chat.speaker
        )
        self.superseded_at_submit += len(superseded)
        for old in superseded:
            log.info("job %s superseded by %s in chat=%s before it ran", old, job_id, chat_id)
        self.lane.submit(job_id, chat_id)
        return job_id

    def _say(self, chat_id: str, text: str) -> str:
        self.journal.add_text(chat_id, text)
        return text

    # -- the rest of the port ----------------------------------------------------------------

    def send_text(self, chat_id: str, text: str) -> None:
        """Send a text to a chat (through its outbox)."""
        self._say(chat_id, text)

    def phrase(self, chat_id: str, key: str, **values: str) -> str:
        """One of the bot's sentences, in the chat's language."""
        return phrasebook.text(key, self.journal.chat(chat_id).lang, **values)

    def pending(
        self, prefix: str, limit: int = 100, skip: Collection[str] = ()
    ) -> list[OutboxItem]:
        """Unacknowledged items of the chats whose ids start with `prefix`, oldest first."""
        return self.journal.unsent(prefix, limit, skip)

    def ack(self, item: OutboxItem) -> None:
        """The app accepted `item`."""
        self.journal.mark_sent(item.chat_id, item.seq)

    def refuse(self, item: OutboxItem, reason: str) -> None:
        """The app refused `item` for good: failed in the journal, counted, never resent."""
        self.journal.mark_failed(item.chat_id, item.seq, reason[:500])
        self.refused += 1

    def outbox(self, chat_id: str, after: int = 0) -> list[OutboxItem] | None:
        """A chat's items after `after`; None for a chat never seen."""
        if not self.journal.known_chat(chat_id):
            return None
        return self.journal.outbox(chat_id, after)

    def job(self, job_id: str) -> Job | None:
        """A job by id."""
        return self.journal.job(job_id)

    def delivery(self, job_id: str) -> OutboxItem | None:
        """The outbox item a job produced, if any."""
        return self.journal.delivery(job_id)

    def cursor(self, name: str) -> str | None:
        """A channel's saved position."""
        return self.journal.cursor(name)

    def storage_full(self) -> str | None:
        """Why no new work is taken, or None."""
        return self.storage.refusal() if self.storage is not None else None

    def storage_trouble(self, exc: BaseException) -> bool:
        """Whether `exc` means the state dir is full (then it is marked so)."""
        if self.storage is None or not exhausted(exc):
            return False
        self.storage.mark_full(str(exc))
        return True

    def set_cursor(self, name: str, value: str) -> None:
        """Save a channel's position."""
        self.journal.set_cursor(name, value)

    def move_chat(self, old: str, new: str) -> None:
        """A chat got a new id: its settings go along."""
        self.journal.move_chat(old, new)


def _for_us(incoming: Incoming, command: commands.Command | None) -> bool:
    """In a group only text for this bot is ours: another bot's command, or a photo people
    share (no command at all), is left alone."""
    return not incoming.group or (command is not None and not isinstance(command, commands.Unknown))
