"""The iMessage channel: `imsg rpc` (JSON-RPC 2.0, one object per line over stdio).

`watch.subscribe` resumes from the last handled rowid (journalled), so a restart neither
replays nor misses messages; the bot's own messages (`is_from_me`) are skipped. Voice notes go
out as Opus 24 kHz in CAF (what Messages uses for voice bubbles) when ffmpeg has libopus, else
as MP3 attachments. If imsg dies it is restarted with a growing back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

from msgvoice import audio
from msgvoice.channels.outbox import ChannelError, OutboxPump, next_backoff, prefixed
from msgvoice.config import ImessageConfig
from msgvoice.router import OutboxBell, Router
from msgvoice.store import Store

log = logging.getLogger(__name__)

PREFIX = "im:"
CURSOR = "imessage.rowid"
CAF_RATE = 24_000
FFMPEG_TIMEOUT_S = 60
HEALTHY_SESSION_S = 60.0


def caf_encoder() -> str | None:
    """ffmpeg's path if it can write Opus (for CAF voice bubbles), else None."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    try:
        listing = subprocess.run(
            [ffmpeg, "-hide_banner", "-encoders"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return ffmpeg if "libopus" in listing else None


def to_caf(src: Path, ffmpeg: str) -> Path:
    """The job's audio as Opus 24 kHz mono in CAF (made once, beside it)."""
    target = src.with_name(f"{src.stem}.caf")
    if not target.exists():
        partial = target.with_name(f".{target.name}.part.caf")
        done = subprocess.run(
            [
                ffmpeg,
                "-nostdin",
                "-y",
                "-loglevel",
                "error",
                "-i",
                str(src),
                "-ac",
                "1",
                "-ar",
                str(CAF_RATE),
                "-c:a",
                "libopus",
                "-b:a",
                "32k",
                str(partial),
            ],
            capture_output=True,
            text=True,
            timeout=FFMPEG_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ChannelError(f"ffmpeg could not make CAF: {done.stderr.strip()[:200]}")
        partial.replace(target)
    return target


class RpcError(ChannelError):
    """imsg answered a request with a JSON-RPC error."""


class ImessageChannel:
    """Owns the `imsg rpc` process."""

    def __init__(
        self,
        config: ImessageConfig,
        router: Router,
        store: Store,
        bell: OutboxBell,
        audio_dir: Path,
    ) -> None:
        self.config, self.router, self.store, self.audio_dir = config, router, store, audio_dir
        self.pump = OutboxPump(store, bell, PREFIX, self._send)
        self.ffmpeg = caf_encoder() if config.voice_format == "caf" else None
        if config.voice_format == "caf" and self.ffmpeg is None:
            log.warning("no ffmpeg with libopus: iMessage voice notes go out as MP3 attachments")
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
            since = self.store.cursor(CURSOR)
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
                await self.router.message(
                    f"{PREFIX}{message['chat_id']}",
                    text,
                    message.get("sender"),
                    prefixed(self.config.allow, PREFIX),
                )
            if rowid is not None:
                self.store.set_cursor(CURSOR, str(rowid))

    async def _send(self, row: dict[str, Any]) -> None:
        params: dict[str, Any] = {"chat_id": int(row["chat_id"][len(PREFIX) :])}
        if row["kind"] == "text":
            params["text"] = row["text"]
        else:
            source = self.audio_dir / row["audio_name"]
            if self.ffmpeg is not None:
                voice = await asyncio.to_thread(to_caf, source, self.ffmpeg)
            else:
                voice = await asyncio.to_thread(audio.convert, source, "mp3", CAF_RATE)
            params["file"] = str(voice)
        await self.request("send", params)
