"""The iMessage channel: `imsg rpc` (JSON-RPC 2.0, one object per line over stdio).

`watch.subscribe` resumes from the last handled rowid (journalled), so a restart neither
replays nor misses messages; the bot's own messages (`is_from_me`) are skipped. Voice notes go
out as Opus 24 kHz mono in CAF (the format of Messages' own voice notes; `voice_format = "mp3"`
sends MP3 attachments instead). If imsg dies it is restarted with a growing back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from typing import Any

from msgvoice.channels.outbox import ChannelError, OutboxPump, prefixed
from msgvoice.chat.port import ChatPort, Incoming, OutboxItem
from msgvoice.config import ImessageConfig
from msgvoice.net import next_backoff
from msgvoice.speech.convert import AudioError, convert
from msgvoice.speech.formats import CAF_RATE

log = logging.getLogger(__name__)

PREFIX = "im:"
CURSOR = "imessage.rowid"
HEALTHY_SESSION_S = 60.0


class RpcError(ChannelError):
    """imsg answered a request with a JSON-RPC error."""


class ImessageChannel:
    """Owns the `imsg rpc` process."""

    def __init__(self, config: ImessageConfig, chat: ChatPort) -> None:
        self.config, self.chat = config, chat
        self.pump = OutboxPump(chat, PREFIX, self._send)
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.restarts = 0

    async def run(self) -> None:
        """Keep imsg running and subscribed; handle its messages; push the outbox."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.pump.run())
            group.create_task(self._handle_messages())
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
        """One imsg process: subscribe from the saved rowid, read until it exits."""
        proc = await asyncio.create_subprocess_exec(
            *self.config.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=4 * 1024 * 1024,
        )
        self._proc = proc
        reader = asyncio.create_task(self._read(proc))
        try:
            since = self.chat.cursor(CURSOR)
            params = {"since_rowid": int(since)} if since else {}
            await self.request("watch.subscribe", params)
            log.info("imsg subscribed (pid %d) since rowid %s", proc.pid, since or "now")
            await reader
        finally:
            self._proc = None
            reader.cancel()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ChannelError("imsg exited"))
            self._pending.clear()
        raise ChannelError(f"imsg exited with code {proc.returncode}")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("imsg printed a line that is not JSON: %r", line[:120])
                continue
            if "id" in message and message["id"] is not None:
                future = self._pending.pop(int(message["id"]), None)
                if future is not None and not future.done():
                    if "error" in message:
                        error = message["error"] or {}
                        future.set_exception(
                            RpcError(f"{error.get('code')}: {error.get('message')}")
                        )
                    else:
                        future.set_result(message.get("result"))
            elif message.get("method") == "message":
                self._messages.put_nowait((message.get("params") or {}).get("message") or {})

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        """One JSON-RPC request, bounded by `request_timeout_s`."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise ChannelError("imsg is not running")
        req_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        line = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}
        try:
            proc.stdin.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
            await proc.stdin.drain()
            async with asyncio.timeout(self.config.request_timeout_s):
                return await future
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelError(f"imsg stdin closed: {exc}") from exc
        except TimeoutError:
            raise ChannelError(
                f"imsg did not answer {method} within {self.config.request_timeout_s:.0f}s"
            ) from None
        finally:
            self._pending.pop(req_id, None)

    async def _handle_messages(self) -> None:
        while True:
            message = await self._messages.get()
            rowid = message.get("id")
            text = message.get("text")
            if not message.get("is_from_me") and text and message.get("chat_id") is not None:
                chat_id, sender = f"{PREFIX}{message['chat_id']}", message.get("sender")
                allow = prefixed(self.config.allow, PREFIX)
                await self.chat.message(Incoming(chat_id, text, sender, allow))
            if rowid is not None:
                self.chat.set_cursor(CURSOR, str(rowid))

    async def _send(self, item: OutboxItem) -> None:
        params: dict[str, Any] = {"chat_id": int(item.chat_id[len(PREFIX) :])}
        if item.audio is None:
            params["text"] = item.text
        else:
            try:
                fmt = self.config.voice_format
                voice = await asyncio.to_thread(convert, item.audio, fmt, CAF_RATE)
            except AudioError as exc:
                raise ChannelError(str(exc)) from exc
            params["file"] = str(voice)
        await self.request("send", params)
