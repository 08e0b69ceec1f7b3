"""The Matrix channel: a bot account on any homeserver, through matrix-nio (the maintained
asyncio client library; mautrix is made for bridges and appservices, more than a bot needs).

Login: an access token, or the password once. The session (device id and token) is kept in
the journal, so a restart reuses the bot's device instead of adding one each time; a session
the homeserver forgot (M_UNKNOWN_TOKEN) logs in again with the password, on the same device.
Credentials the homeserver refuses stop this channel, not the daemon, with one log line.

Intake is /sync long polling. The sync token is journalled with the ids of the events of that
batch already handled, so a restart resumes the batch without handling an event twice and
misses none; a timeline the server cut short (`limited`, after a long outage) is filled in from
/messages back to where the last sync ended. The first start ever takes invites, not history.
Invites from allowed users (`matrix.allow`; empty: everyone) are joined. In a room of more than
two, only commands are ours. The bot's own events, notices (other bots), edits and what came
before the bot joined are not answered. msgvoice cannot read end-to-end encrypted messages (it
has no olm): it says so once per room, in the room and in the log.

Delivery: voice notes as OGG/Opus 48 kHz, uploaded to the media repository and sent as the
voice message Element sends (`matrix_api.voice_content`: its duration and waveform), split in
parts over the server's upload limit; texts as `m.notice` (a bot's messages, which other bots do
not answer). Each event carries a transaction id made of its chat, seq and part, so a send
retried after a lost answer is not posted twice: the homeserver deduplicates by it. Errors and
how each is handled: matrix_api.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import zlib
from pathlib import Path
from typing import Any

from nio import (
    InviteInfo,
    InviteMemberEvent,
    MegolmEvent,
    MessageDirection,
    RoomInfo,
    RoomMemberEvent,
    RoomMessageMedia,
    RoomMessageText,
    SyncResponse,
)

from msgvoice.channels.intake import prefixed, take_in
from msgvoice.channels.matrix_api import (
    PREFIX,
    TEXT_LIMIT,
    WAVEFORM_POINTS,
    LoginRefused,
    MatrixApi,
    SessionLost,
    addressed,
    text_of,
    voice_content,
)
from msgvoice.channels.outbox import ChannelError, OutboxPump, serve, wait_out
from msgvoice.channels.telegram_api import split_text
from msgvoice.chat.port import ChatPort, Incoming, OutboxItem, allowed
from msgvoice.config import MatrixConfig
from msgvoice.speech.convert import AudioError, fit_voice_note, levels

log = logging.getLogger(__name__)

SYNC = "matrix.sync:"
"""Cursor per bot user: {"since": the batch's token, "done": ids of its events handled}."""
SAID_ENCRYPTED = "matrix.encrypted:"
"""Cursor per room: the room was told the bot cannot read encrypted messages."""
VOICE_RATE = 48_000
GAP_EVENTS_MAX = 1000
SYNC_FILTER = {
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
    "room": {"timeline": {"limit": 100}, "ephemeral": {"not_types": ["*"]}},
}


class MatrixChannel:
    """One bot account through one matrix-nio client."""

    prefix = PREFIX

    def __init__(self, config: MatrixConfig, chat: ChatPort) -> None:
        self.config, self.chat = config, chat
        self.api = MatrixApi(config, chat)
        self.client, self.call = self.api.client, self.api.call
        self.pump = OutboxPump(chat, PREFIX, self._send)
        self._uploaded: dict[str, dict[str, Any]] = {}
        """A voice note's part already in the media repository → its voice message."""

    async def run(self) -> None:
        """Log in, then sync and push the outbox until cancelled."""
        try:
            await self.api.log_in()
            await serve("matrix", self._sync, self.pump.run, (LoginRefused,))
        except* LoginRefused as group:
            log.error(
                "matrix channel stopped: %s; set matrix.password or matrix.access_token of the "
                "bot account %s and restart",
                group.exceptions[0],
                self.config.user_id or "(matrix.user_id)",
            )
        finally:
            await self.client.close()

    async def _sync(self) -> None:
        key = SYNC + self.client.user_id
        since, done = "", set[str]()
        with contextlib.suppress(ValueError, TypeError, KeyError):
            saved = json.loads(self.chat.cursor(key) or "")
            since, done = str(saved["since"]), set(saved["done"])
        backoff = 0.0
        while True:
            try:
                answer = await self.call(
                    "sync",
                    self.client.sync(
                        timeout=self.config.sync_timeout_s * 1000 if since else 0,
                        sync_filter=SYNC_FILTER,
                        since=since or None,
                        full_state=not since,
                    ),
                )
                await self._batch(answer, key, since, done)
            except SessionLost as exc:
                if self.config.access_token:
                    raise LoginRefused(f"matrix.access_token was logged out ({exc})") from exc
                log.warning("matrix: %s; logging in again", exc)
                await self.api.log_in()
                continue
            except ChannelError as exc:
                backoff = await wait_out("matrix sync", exc, backoff)
                continue
            backoff, since, done = 0.0, answer.next_batch, set()
            self.chat.set_cursor(key, json.dumps({"since": since, "done": []}))

    async def _batch(self, answer: SyncResponse, key: str, since: str, done: set[str]) -> None:
        """One sync's invites and (after the first start) its rooms' new events, each
        handled one recorded under the cursor `key`."""
        for room_id, invite in answer.rooms.invite.items():
            await take_in(f"matrix invite to {room_id}", self._invited, (room_id, invite))
        for room_id in answer.rooms.leave:
            log.info("matrix: no longer in room %s (left, kicked or banned)", room_id)
        if not since:
            return
        for room_id, info in answer.rooms.join.items():
            room = self.client.rooms.get(room_id)
            if room is not None and room.encrypted:
                self._cannot_read(room_id)
            for event in await self._timeline(room_id, info, since):
                if event.event_id in done:
                    continue
                await take_in(f"matrix event {event.event_id}", self._event, (room_id, event))
                done.add(event.event_id)
                self.chat.set_cursor(key, json.dumps({"since": since, "done": sorted(done)}))

    async def _timeline(self, room_id: str, info: RoomInfo, since: str) -> list[Any]:
        """A room's new events since the bot joined it; a timeline cut short (and not by the
        bot's join) is filled in back to `since`."""
        events = list(info.timeline.events)
        start, me = info.timeline.prev_batch, self.client.user_id
        if (joined := after_join(events, me)) is not None or not info.timeline.limited:
            return events if joined is None else joined
        earlier: list[Any] = []
        while start and len(earlier) < GAP_EVENTS_MAX:
            page = await self.call(
                "messages",
                self.client.room_messages(room_id, start, since, MessageDirection.back, 100),
            )
            earlier += page.chunk
            start = page.end if page.chunk and page.end != start else None
        log.info("matrix: %d events of %s fetched after a gap", len(earlier), room_id)
        events = [*reversed(earlier), *events]
        return after_join(events, me) or events

    async def _invited(self, invited: tuple[str, InviteInfo]) -> None:
        room_id, invite = invited
        me = self.client.user_id
        inviter = next(
            (
                e.sender
                for e in invite.invite_state
                if isinstance(e, InviteMemberEvent) and e.state_key == me
            ),
            None,
        )
        if not allowed(prefixed(self.config.allow, PREFIX), PREFIX + room_id, inviter):
            log.info(
                "matrix: invite to %s from %s left alone (not in matrix.allow)", room_id, inviter
            )
            return
        try:
            await self.call("join", self.client.join(room_id))
        except ChannelError as exc:
            if not exc.permanent:
                raise
            log.warning("matrix: cannot join %s (invited by %s): %s", room_id, inviter, exc)
            return
        log.info("matrix: joined %s (invited by %s)", room_id, inviter)

    def _cannot_read(self, room_id: str) -> None:
        """Tell an encrypted room, once, that the bot cannot read it."""
        chat = PREFIX + room_id
        if self.chat.cursor(SAID_ENCRYPTED + room_id):
            return
        log.warning("matrix room %s is end-to-end encrypted: msgvoice cannot read it", room_id)
        self.chat.send_text(chat, self.chat.phrase(chat, "encrypted"))
        self.chat.set_cursor(SAID_ENCRYPTED + room_id, "1")

    async def _event(self, received: tuple[str, Any]) -> None:
        room_id, event = received
        me = self.client.user_id
        if event.sender == me:
            return
        if isinstance(event, MegolmEvent):
            self._cannot_read(room_id)
            return
        room = self.client.rooms.get(room_id)
        if isinstance(event, RoomMessageText):
            text = text_of(event.source.get("content") or {}, event.body)
            if text is None:
                return  # an edit: not spoken again
            names = (room.user_name(me) if room else None) or "", me.partition(":")[0][1:]
            text = addressed(text, names)
        elif isinstance(event, RoomMessageMedia):
            text = None
        else:
            return  # notices (bots), state, reactions, redactions
        group = room is not None and room.joined_count > 2
        allow = prefixed(self.config.allow, PREFIX)
        await self.chat.message(Incoming(PREFIX + room_id, text, event.sender, allow, group))

    async def _send(self, item: OutboxItem) -> None:
        if item.audio is None:
            for n, text in enumerate(split_text(item.text or "", TEXT_LIMIT)):
                await self._post(item, n, {"msgtype": "m.notice", "body": text})
            return
        try:
            parts = await asyncio.to_thread(
                fit_voice_note, item.audio, self.api.upload_max, VOICE_RATE
            )
        except AudioError as exc:  # a voice note that cannot be read never will be
            raise ChannelError(str(exc), permanent=True) from exc
        for n, part in enumerate(parts):
            body = "Voice message" if len(parts) == 1 else f"Voice message {n + 1}/{len(parts)}"
            await self._post(item, n, await self._voice(part, body))
        for part in parts:
            self._uploaded.pop(str(part), None)

    async def _voice(self, part: Path, body: str) -> dict[str, Any]:
        """The voice message of one part: its audio measured and uploaded once, however often
        the item is retried."""
        if (content := self._uploaded.get(str(part))) is not None:
            return content
        seconds, loudness = await asyncio.to_thread(levels, part, WAVEFORM_POINTS)
        data = await asyncio.to_thread(part.read_bytes)
        answer, _ = await self.call(
            "upload",
            self.client.upload(lambda *_: data, "audio/ogg", f"{body}.ogg", filesize=len(data)),
        )
        content = voice_content(
            answer.content_uri, len(data), round(seconds * 1000), loudness, body
        )
        self._uploaded[str(part)] = content
        while len(self._uploaded) > 64:  # refused items leave theirs: keep a few
            self._uploaded.pop(next(iter(self._uploaded)))
        return content

    async def _post(self, item: OutboxItem, part: int, content: dict[str, Any]) -> None:
        """One event; resent with the same transaction id, the homeserver posts it once."""
        room_id = item.chat_id.removeprefix(PREFIX)
        txn = f"msgvoice.{zlib.crc32(item.chat_id.encode()):08x}.{item.seq}.{part}"
        try:
            await self.call(
                "send", self.client.room_send(room_id, "m.room.message", content, tx_id=txn)
            )
        except SessionLost as exc:  # the intake logs in again; this item waits for it
            raise ChannelError(str(exc)) from exc


def after_join(events: list[Any], me: str) -> list[Any] | None:
    """The events after the bot's own join, or None when its join is not among them: what
    was said before the bot came in is not for it."""
    for n in range(len(events) - 1, -1, -1):
        e = events[n]
        joined = isinstance(e, RoomMemberEvent) and e.membership == "join"
        if joined and e.state_key == me and e.prev_membership != "join":
            return events[n + 1 :]
    return None
