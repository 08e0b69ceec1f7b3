"""The Discord channel: a bot application, through discord.py (maintained since 2015, asyncio
on aiohttp, which msgvoice already uses; it keeps the Gateway's heartbeats, its RESUME after a
dropped connection and its zlib transport compression, and the REST API's per-bucket and
global rate limits. hikari does as much, with more dependencies; py-cord is a fork of
discord.py that trails it).

Intake is the Gateway. At start the bot registers its global slash commands (`/tts`, `/mode`,
`/help`), which need no privileged intent; each use is acknowledged at once (a deferred
response: "thinking…", well within Discord's 3 s) and answered by the first reply to that
channel: a text replaces the "thinking…", a voice note goes to the channel as a voice message
and the "thinking…" is withdrawn; where the bot may not post in the channel (Missing Access),
the audio replaces the "thinking…" as a file instead. An interaction's token lasts 15 minutes;
deferred ones are journalled, so a restart still answers them. Plain messages: in DMs, and in
servers where they mention the bot; with `discord.message_content` (the Message Content
intent, switched on in the Developer Portal) every `/tts …` in a server. Events of one
connection are handled one by one in their order; a dropped connection resumes and Discord
replays what it missed. What the daemon was not running for is not replayed (Discord keeps no
queue for bots). Chats are channels (`dc:<channel id>`), so settings are per channel; the
allow-list takes user or channel ids. Bots, webhooks and system messages are not answered.

Delivery: voice notes as OGG/Opus 48 kHz voice messages (discord_api.py), split in parts over
the upload limit; a channel that takes no voice messages gets an audio file; texts in parts of
2,000 characters. Errors and how each is handled: discord_api.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from pathlib import Path
from typing import Any

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from msgvoice.channels.discord_api import (
    COMMANDS,
    PREFIX,
    TEXT_LIMIT,
    TRANSPORT_ERRORS,
    UPLOAD_MAX,
    WAVEFORM_POINTS,
    Deferrals,
    Deferred,
    NoVoice,
    Rest,
    contained,
    failure,
    nonce,
    now_ms,
    text_body,
    voice_form,
)
from msgvoice.channels.intake import InOrder, prefixed
from msgvoice.channels.outbox import ChannelError, OutboxPump, serve, wait_out
from msgvoice.channels.telegram_api import split_text
from msgvoice.chat.port import ChatPort, Incoming, OutboxItem
from msgvoice.config import DiscordConfig
from msgvoice.speech.convert import AudioError, fit_voice_note, levels

log = logging.getLogger(__name__)
VOICE_RATE = 48_000
REFUSED_LOGIN = {4004: "the bot token was refused", 4013: "invalid intents", 4012: "old API"}
_MENTION = re.compile(r"\A\s*<@!?(\d+)>[\s,:]*")


class LoginRefused(RuntimeError):
    """Discord refused the bot's token or intents: the channel stops (not the daemon)."""


class _Client(discord.Client):
    def __init__(self, channel: DiscordChannel, intents: discord.Intents) -> None:
        super().__init__(intents=intents, max_ratelimit_timeout=30.0, max_messages=None)
        self.channel = channel
        # discord.py reads each event inside its connection loop: one it cannot read would
        # end the connection (and the session). It is that event's failure alone.
        parsers = self._connection.parsers
        for event, parse in list(parsers.items()):
            parsers[event] = contained(event, parse)

    async def setup_hook(self) -> None:
        await self.channel.logged_in(self)

    async def on_message(self, message: discord.Message) -> None:
        self.channel.heard(message)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self.channel.invoked(interaction)


class DiscordChannel:
    """One bot application over one Gateway connection."""

    prefix = PREFIX

    def __init__(self, config: DiscordConfig, chat: ChatPort) -> None:
        self.config, self.chat = config, chat
        Route.BASE = config.api_base.rstrip("/")  # discord.py's one base URL, for every route
        self.pump = OutboxPump(chat, PREFIX, self._send)
        self.allow = prefixed(config.allow, PREFIX)
        self.rest: Rest | None = None
        self.me = 0
        self.deferrals = Deferrals(chat)
        self._inbox: InOrder[tuple[Incoming, Deferred | None]] = InOrder(self._take)

    async def run(self) -> None:
        """Connect, then take events and push the outbox until cancelled."""
        try:
            await serve("discord", self._intake, self.pump.run, (LoginRefused,))
        except* LoginRefused as group:
            log.error(
                "discord channel stopped: %s; set discord.token to the bot's token (Developer "
                "Portal → Bot) and restart",
                group.exceptions[0],
            )

    async def _intake(self) -> None:
        """The Gateway, and beside it the handling of what it brings (which never raises:
        take_in keeps each event's failure to it)."""
        await self._inbox.beside(self._gateway())

    async def _gateway(self) -> None:
        """The Gateway, connected again after whatever discord.py does not recover from."""
        intents = discord.Intents(guilds=True, guild_messages=True, dm_messages=True)
        intents.message_content = self.config.message_content
        backoff = 0.0
        while True:
            client = _Client(self, intents)
            self.rest = Rest(client.http)
            try:
                await client.start(self.config.token)
            except discord.LoginFailure as exc:
                raise LoginRefused(f"the bot token was refused ({exc})") from exc
            except discord.PrivilegedIntentsRequired as exc:
                raise LoginRefused(
                    "the Message Content intent is not switched on for this bot: switch it on "
                    "(Developer Portal → Bot → Privileged Gateway Intents) or set "
                    "discord.message_content = false"
                ) from exc
            except discord.ConnectionClosed as exc:
                if exc.code in REFUSED_LOGIN:
                    raise LoginRefused(f"{REFUSED_LOGIN[exc.code]} ({exc})") from exc
                backoff = await wait_out("discord gateway", failure(exc, "gateway"), backoff)
            except (discord.HTTPException, discord.GatewayNotFound, *TRANSPORT_ERRORS) as exc:
                backoff = await wait_out("discord gateway", failure(exc, "login"), backoff)
            except AttributeError as exc:  # discord.py 2.7 when its first connection fails
                if client.ws is not None:
                    raise
                backoff = await wait_out("discord gateway", failure(exc, "connect"), backoff)
            finally:
                await client.close()

    async def logged_in(self, client: discord.Client) -> None:
        """Register the slash commands (plain messages still work when that fails)."""
        assert client.user is not None and client.application_id is not None
        self.me = client.user.id
        log.info("discord bot %s (%s)", client.user, self.me)
        rest = Rest(client.http)
        # discord.py starts at its built-in Gateway URL; Discord's is what /gateway/bot says.
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(await rest.gateway())
        try:
            await rest.register(client.application_id)
        except ChannelError as exc:
            log.warning("discord: the slash commands are not registered: %s", exc)

    def heard(self, message: discord.Message) -> None:
        """A message: queued, so that one connection's messages are handled in order."""
        author = message.author
        if author.bot or message.webhook_id or author.id == self.me:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        text = _MENTION.sub("", message.content, count=1) if message.content else ""
        group = message.guild is not None
        if not text and (group or not message.attachments):
            return  # a server message without its content (no Message Content intent)
        chat = PREFIX + str(message.channel.id)
        incoming = Incoming(chat, text or None, str(author.id), self.allow, group)
        self._inbox.put(f"discord message {message.id}", (incoming, None))

    async def invoked(self, interaction: discord.Interaction) -> None:
        """A slash command: acknowledged now, handled in its turn."""
        data: dict[str, Any] = dict(interaction.data or {})
        names = [c["name"] for c in COMMANDS]
        if interaction.type is not discord.InteractionType.application_command:
            return
        if (name := str(data.get("name"))) not in names or self.rest is None:
            return
        options = data.get("options") or []
        text = f"/{name} {options[0].get('value', '') if options else ''}".strip()
        try:
            await self.rest.defer(interaction.id, interaction.token)
        except ChannelError as exc:
            log.warning("discord: /%s could not be acknowledged: %s", name, exc)
            return
        deferred = Deferred(interaction.application_id, interaction.token, now_ms())
        chat = PREFIX + str(interaction.channel_id)
        incoming = Incoming(chat, text, str(interaction.user.id), self.allow, group=False)
        self._inbox.put(f"discord /{name} {interaction.id}", (incoming, deferred))

    async def _take(self, event: tuple[Incoming, Deferred | None]) -> None:
        incoming, deferred = event
        if deferred is not None:
            self.deferrals.add(incoming.chat_id, deferred)
        outcome = await self.chat.message(incoming)
        if deferred is not None and not outcome.jobs and not outcome.replies:
            self.deferrals.drop(incoming.chat_id, deferred)
            if self.rest is not None:
                with contextlib.suppress(ChannelError):
                    await self.rest.withdraw(deferred.app, deferred.token)

    async def _send(self, item: OutboxItem) -> None:
        rest = self.rest
        if rest is None or rest.http.token is None:
            raise ChannelError("discord: not logged in yet")
        deferred, older = self.deferrals.answered_by(item)
        channel = item.chat_id.removeprefix(PREFIX)
        if item.audio is None:
            texts = split_text(item.text or "", TEXT_LIMIT)
            if deferred is not None and await rest.answer_text(deferred, texts[0]):
                texts, deferred = texts[1:], None
            for n, text in enumerate(texts):
                await rest.post(channel, text_body(text, nonce(item.chat_id, item.seq, n)))
        else:
            try:
                parts = await asyncio.to_thread(fit_voice_note, item.audio, UPLOAD_MAX, VOICE_RATE)
            except AudioError as exc:  # a voice note that cannot be read never will be
                raise ChannelError(str(exc), permanent=True) from exc
            for n, part in enumerate(parts):
                if await self._voice(rest, item, n, part, deferred if n == 0 else None):
                    deferred = None
        for done in [*older, *([deferred] if deferred else [])]:
            with contextlib.suppress(ChannelError):
                await rest.withdraw(done.app, done.token)
        self.deferrals.settle(item)

    async def _voice(
        self, rest: Rest, item: OutboxItem, n: int, part: Path, deferred: Deferred | None
    ) -> bool:
        """One part as a voice message in the channel; True when it answered `deferred`
        instead (the bot may not post there)."""
        seconds, loudness = await asyncio.to_thread(levels, part, WAVEFORM_POINTS)
        data = await asyncio.to_thread(part.read_bytes)
        channel, once = item.chat_id.removeprefix(PREFIX), nonce(item.chat_id, item.seq, n)
        try:
            await rest.post(channel, voice_form(data, seconds, loudness, once))
        except NoVoice:
            log.info("discord channel %s takes no voice messages: sent as a file", channel)
            await rest.post(channel, voice_form(data, seconds, loudness, once, voice=False))
        except ChannelError as exc:
            if not exc.permanent or deferred is None:
                raise
            log.info("discord channel %s: %s; answering the slash command instead", channel, exc)
            form = voice_form(data, seconds, loudness, None, voice=False)
            await rest.answer(deferred.app, deferred.token, form)
            return True
        return False
