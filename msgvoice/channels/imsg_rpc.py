"""One `imsg rpc` process, spoken to as steipete/imsg's `docs/rpc.md` and `RPCServer` define:
JSON-RPC 2.0, one object per line on stdin/stdout; stderr is for people (msgvoice logs it).

Errors come as `{"code", "message", "data"}`: `message` is only the JSON-RPC label ("Invalid
params", "Internal error"); `data` holds the reason ("unknown chat_id 7", the Full Disk Access
text, the Tahoe ghost-row check). Invalid params (-32602) is the request's fault and never
succeeds on a retry; neither does a method this imsg lacks (-32601), a file it cannot find
("Attachment not found") or the ghost-row check ("unjoined empty outgoing row"). A failed watch
arrives as a notification `{"method": "error", "params": {"subscription", "error":
{"message"}}}` while imsg keeps running: the caller is told through `watch_failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from msgvoice.channels.outbox import ChannelError

log = logging.getLogger(__name__)

METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
PERMANENT_HINTS = ("unjoined empty outgoing row", "Attachment not found")
PERMISSION_HINTS = ("Full Disk Access", "authorization denied", "unable to open database")
"""What imsg's error `data` says when it cannot read chat.db."""
FULL_DISK_ACCESS_FIX = (
    "grant Full Disk Access (System Settings > Privacy & Security > Full Disk Access) to the "
    "program that starts imsg: {parent}; under launchd that is this Python, not your "
    "terminal; then restart msgvoice"
)


def full_disk_access_fix() -> str:
    """What to grant, and to which program, when imsg cannot read chat.db."""
    return FULL_DISK_ACCESS_FIX.format(parent=os.path.realpath(sys.executable))


class RpcError(ChannelError):
    """imsg answered a request with a JSON-RPC error."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.code = error.get("code")
        self.data = str(error.get("data") or "")
        text = f"{self.code} {error.get('message')}" + (f": {self.data}" if self.data else "")
        permanent = self.code in (METHOD_NOT_FOUND, INVALID_PARAMS) or any(
            h in self.data for h in PERMANENT_HINTS
        )
        super().__init__(text, permanent=permanent)

    @property
    def needs_permission(self) -> bool:
        """imsg cannot read chat.db: the parent process lacks Full Disk Access."""
        return any(h in self.data for h in PERMISSION_HINTS)


class ImsgProcess:
    """A started `imsg rpc`: requests with bounded waits, notifications handed on."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        on_message: Callable[[dict[str, Any]], None],
        request_timeout_s: float,
    ) -> None:
        self.proc, self.on_message, self.request_timeout_s = proc, on_message, request_timeout_s
        self.watch_failed = asyncio.Event()
        self.watch_error = ""
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._tasks = [
            asyncio.create_task(self._read(), name="imsg-stdout"),
            asyncio.create_task(self._stderr(), name="imsg-stderr"),
        ]

    @classmethod
    async def start(
        cls,
        command: Sequence[str],
        on_message: Callable[[dict[str, Any]], None],
        request_timeout_s: float,
    ) -> ImsgProcess:
        """Spawn `imsg rpc` (OSError when it cannot run)."""
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=4 * 1024 * 1024,
        )
        return cls(proc, on_message, request_timeout_s)

    async def finished(self) -> None:
        """Until stdout closes (imsg exited)."""
        await asyncio.shield(self._tasks[0])

    async def close(self) -> None:
        """Stop the process and fail whatever still waits for an answer."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelError("imsg exited"))
        self._pending.clear()

    async def request(self, method: str, params: dict[str, Any], timeout_s: float = 0) -> Any:
        """One request; its result, RpcError, or ChannelError when it takes too long."""
        stdin = self.proc.stdin
        if stdin is None or self.proc.returncode is not None:
            raise ChannelError("imsg is not running")
        req_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        line = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}
        limit = timeout_s or self.request_timeout_s
        try:
            stdin.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
            await stdin.drain()
            async with asyncio.timeout(limit):
                return await future
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelError(f"imsg stdin closed: {exc}") from exc
        except TimeoutError:
            raise RequestTimeout(f"imsg did not answer {method} within {limit:.0f}s") from None
        finally:
            self._pending.pop(req_id, None)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("imsg printed a line that is not JSON: %r", line[:120])
                continue
            if isinstance(message, dict):
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("id") is not None:
            future = self._pending.pop(_int(message["id"]), None)
            if future is not None and not future.done():
                if "error" in message:
                    future.set_exception(RpcError(message["error"] or {}))
                else:
                    future.set_result(message.get("result"))
        elif message.get("method") == "message":
            self.on_message((message.get("params") or {}).get("message") or {})
        elif message.get("method") == "error":
            error = (message.get("params") or {}).get("error") or {}
            self.watch_error = str(error.get("message") or error)
            self.watch_failed.set()

    async def _stderr(self) -> None:
        """imsg's diagnostics (Full Disk Access hints among them) into msgvoice's log."""
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            log.info("imsg: %s", line.decode(errors="replace").rstrip())


class RequestTimeout(ChannelError):
    """imsg did not answer in time; the request may still have been carried out."""


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


async def bridge_ready(command: Sequence[str], timeout_s: float = 10.0) -> bool:
    """Whether imsg's IMCore bridge answers, which `send.attachment` with `as_voice` needs to
    send a voice bubble. `imsg status --json` (StatusCommand.swift): `advanced_features` only
    says a lock file exists; `v2_ready` is the bridge's own answer to a live probe, and
    `rpc_methods`, where imsg lists them, must hold `send.attachment`."""
    status = [*command[:-1], "status", "--json"] if list(command[-1:]) == ["rpc"] else []
    if not status:
        return False
    try:
        proc = await asyncio.create_subprocess_exec(
            *status, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        return False
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
        facts = json.loads(out.splitlines()[0])
        methods = facts.get("rpc_methods")
        listed = methods is None or "send.attachment" in methods
        return bool(facts.get("advanced_features") and facts.get("v2_ready") and listed)
    except (TimeoutError, ValueError, IndexError, AttributeError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False
