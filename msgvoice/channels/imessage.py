"""The iMessage channel through `imsg rpc` (see imsg_rpc.py for the protocol).

`watch.subscribe` resumes from the last handled rowid (journalled), so a restart neither
replays nor misses messages; the bot's own messages (`is_from_me`) are skipped. A session ends
when imsg exits or reports a failed watch; imsg is then restarted with a growing back-off and
resubscribed from the journalled rowid.

Voice notes go out as Opus 24 kHz mono in CAF, Messages' own voice-note format. Only imsg's
`send.attachment` with `as_voice: true` marks them as audio messages (voice bubbles), and it
needs imsg's IMCore bridge; plain `send` with a `file` (the fallback when the bridge is not
running) delivers an ordinary attachment, and is what a bridge error falls back to (the
bridge is probed again when imsg next starts). A send that timed out may still have gone out: before
it is sent again, `messages.history` of that chat is checked, and a voice note or text already
there is not sent twice.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path
from typing import Any

from msgvoice.channels.imsg_rpc import (
    ImsgProcess,
    RequestTimeout,
    RpcError,
    bridge_ready,
    full_disk_access_fix,
)
from msgvoice.channels.intake import prefixed, take_in
from msgvoice.channels.outbox import ChannelError, OutboxPump
from msgvoice.chat.port import ChatPort, Incoming, OutboxItem, keep_running
from msgvoice.config import ImessageConfig
from msgvoice.net import next_backoff
from msgvoice.speech.convert import AudioError, convert
from msgvoice.speech.formats import CAF_RATE

log = logging.getLogger(__name__)

PREFIX = "im:"
CURSOR = "imessage.rowid"
HEALTHY_SESSION_S = 60.0
HISTORY_LIMIT = 30
TIMED_OUT = "imessage.timed_out:"
"""Cursor prefix: a send that timed out (`<chat>:<seq>`) → when it was first tried."""


class ImessageChannel:
    """Owns the `imsg rpc` process, restarting it when it ends."""

    prefix = PREFIX

    def __init__(self, config: ImessageConfig, chat: ChatPort) -> None:
        self.config, self.chat = config, chat
        self.pump = OutboxPump(chat, PREFIX, self._send)
        self.imsg: ImsgProcess | None = None
        self.voice_bubbles = False
        """Whether voice notes go as audio messages (`send.attachment as_voice`)."""
        self._messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._told_fda = False
        self.restarts = 0

    async def run(self) -> None:
        """Keep imsg running and subscribed; handle its messages; push the outbox."""
        async with asyncio.TaskGroup() as group:  # intake and delivery: apart
            group.create_task(keep_running("imessage delivery", self.pump.run))
            group.create_task(keep_running("imessage intake", self._handle_messages))
            backoff = 0.0
            while True:
                started = asyncio.get_running_loop().time()
                try:
                    await self._session()
                except (ChannelError, OSError) as exc:
                    if asyncio.get_running_loop().time() - started > HEALTHY_SESSION_S:
                        backoff = 0.0  # it ran fine for a while: not a crash loop
                    backoff = next_backoff(backoff, first_s=0.5)
                    log.warning("imsg session ended (%s); restarting in %.1fs", exc, backoff)
                self.restarts += 1
                await asyncio.sleep(backoff)

    async def _session(self) -> None:
        """One imsg process: subscribe from the saved rowid; end on exit or a failed watch."""
        self.voice_bubbles = await bridge_ready(self.config.command)
        imsg = await ImsgProcess.start(
            self.config.command, self._messages.put_nowait, self.config.request_timeout_s
        )
        self.imsg = imsg
        try:
            since = self.chat.cursor(CURSOR)
            params = {"since_rowid": int(since)} if since else {}
            await self._subscribe(imsg, params)
            log.info(
                "imsg subscribed (pid %d) since rowid %s; voice notes as %s",
                imsg.proc.pid,
                since or "now",
                "voice bubbles (bridge)" if self.voice_bubbles else "attachments (no bridge)",
            )
            ended = asyncio.create_task(imsg.finished())
            failed = asyncio.create_task(imsg.watch_failed.wait())
            await asyncio.wait({ended, failed}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            failed.cancel()
            if imsg.watch_failed.is_set():
                raise ChannelError(f"imsg's watch failed: {imsg.watch_error}")
        finally:
            self.imsg = None
            await imsg.close()
        raise ChannelError(f"imsg exited with code {imsg.proc.returncode}")

    async def _subscribe(self, imsg: ImsgProcess, params: dict[str, Any]) -> None:
        """Subscribe; missing Full Disk Access is logged once until a subscription works."""
        try:
            await imsg.request("watch.subscribe", params)
        except RpcError as exc:
            if exc.needs_permission and not self._told_fda:
                log.error("imsg cannot read chat.db: %s", full_disk_access_fix())
                self._told_fda = True
            raise
        self._told_fda = False

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        """One JSON-RPC request to the running imsg."""
        if self.imsg is None:
            raise ChannelError("imsg is not running")
        return await self.imsg.request(method, params)

    async def _handle_messages(self) -> None:
        while True:
            message = await self._messages.get()
            rowid = message.get("id")
            if not isinstance(rowid, int) or rowid <= int(self.chat.cursor(CURSOR) or 0):
                continue  # handled before (queued again when imsg restarted), or no row at all
            text = message.get("text")
            if not message.get("is_from_me") and text and message.get("chat_id"):  # 0: no chat
                chat_id, sender = f"{PREFIX}{message['chat_id']}", message.get("sender")
                allow = prefixed(self.config.allow, PREFIX)
                incoming = Incoming(chat_id, text, sender, allow)
                await take_in(f"imsg message {rowid}", self.chat.message, incoming)
            self.chat.set_cursor(CURSOR, str(rowid))

    async def _send(self, item: OutboxItem) -> None:
        chat_id = int(item.chat_id[len(PREFIX) :])
        method, params = "send", dict[str, Any](chat_id=chat_id)
        if item.audio is None:
            params["text"] = item.text
        else:
            try:
                fmt = self.config.voice_format
                voice = await asyncio.to_thread(convert, item.audio, fmt, CAF_RATE)
            except AudioError as exc:  # a voice note that cannot be read never will be
                raise ChannelError(str(exc), permanent=True) from exc
            params["file"] = str(voice)
            if self.voice_bubbles:
                method, params["as_voice"] = "send.attachment", True
        where = (item.chat_id, item.seq)
        key = f"{TIMED_OUT}{item.chat_id}:{item.seq}"  # journalled: a restart remembers it
        if (since := self.chat.cursor(key)) and await self._already_sent(chat_id, params, since):
            log.info("imsg send to %s (seq %d) had gone out before its timeout", *where)
            self.chat.set_cursor(key, "")
            return
        tried = datetime.datetime.now(datetime.UTC).isoformat()
        try:
            await self.request(method, params)
        except RequestTimeout:
            if not since:
                self.chat.set_cursor(key, tried)
            raise
        except RpcError as exc:
            if method != "send.attachment":
                raise
            log.warning("imsg's bridge failed (%s); voice notes go out with send", exc)
            self.voice_bubbles = False  # until the next session's probe says otherwise
            params.pop("as_voice")
            await self.request("send", params)
        if since:
            self.chat.set_cursor(key, "")

    async def _already_sent(self, chat_id: int, params: dict[str, Any], since: str) -> bool:
        """Whether the chat's history has this text or file from us since the timed-out try."""
        answer = await self.request(
            "messages.history",
            {"chat_id": chat_id, "limit": HISTORY_LIMIT, "attachments": True, "start": since},
        )
        name = Path(params.get("file") or "").name
        for message in (answer or {}).get("messages", []):
            if not message.get("is_from_me"):
                continue
            files = {Path(a.get("transfer_name") or a.get("filename") or "").name
                     for a in message.get("attachments") or []}  # fmt: skip
            if (name and name in files) or (not name and message.get("text") == params.get("text")):
                return True
        return False
