"""The HTTP listener's guard: open connections are a resource with a cap, not a way in.

Each connection the listener accepts is counted. Over the cap (by default the soft open-file
limit less what the daemon itself needs), a new connection closes the one that has been quiet
the longest with no request under way; when every connection is in a request, the new one is
refused. aiohttp's own keep-alive timeout closes a connection idle for `http.idle_timeout_s`
(its headers are bounded by it too). Clients that hang up or send garbage are their own
trouble: one debug line, never an ERROR traceback in the daemon's log.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

from aiohttp import http_exceptions, web

log = logging.getLogger(__name__)

RESERVED_FILES = 64
"""Open files the daemon keeps for itself (journal, worker pipes, voice notes, clients)."""
BACKLOG = 64
"""The listen backlog: asyncio accepts up to this many connections in one go before any of
them is counted, so they are reserved as well."""
MIN_CONNECTIONS = 8


def default_cap() -> int:
    """Connections allowed when `http.max_connections` is 0: the open-file limit less
    RESERVED_FILES and BACKLOG (128 under launchd's default of 256)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(MIN_CONNECTIONS, soft - RESERVED_FILES - BACKLOG)


class _Counted(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, its last activity noted outside."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard, self.inner = guard, inner
        self.transport: asyncio.Transport | None = None
        self.quiet_since = time.monotonic()
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.admitted = self.guard.admit(self)
        if self.admitted:
            self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.quiet_since = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.guard.release(self):
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ConnectionGuard:
    """Counts the listener's connections and keeps them under `cap`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap or default_cap()
        self.open: set[_Counted] = set()
        self.busy: dict[Any, int] = {}
        """transport → requests under way on it (kept by `middleware`)."""
        self._warned_at = -1e9

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for the listener that counts each connection."""
        return lambda: _Counted(self, factory())

    def admit(self, conn: _Counted) -> bool:
        """Take a new connection, closing the longest-quiet idle one if over the cap."""
        if len(self.open) >= self.cap:
            idle = [c for c in self.open if c.transport not in self.busy]
            if not idle:
                self._warn("refusing new connections: all %d are in a request", len(self.open))
                assert conn.transport is not None
                conn.transport.abort()
                return False
            oldest = min(idle, key=lambda c: c.quiet_since)
            self._warn("over %d connections: closing the ones quiet the longest", self.cap)
            self.open.discard(oldest)  # its connection_lost still reaches aiohttp
            if oldest.transport is not None:
                oldest.transport.abort()
        self.open.add(conn)
        return True

    def release(self, conn: _Counted) -> bool:
        """A connection ended; whether aiohttp has to hear of it (it saw it begin)."""
        self.open.discard(conn)
        self.busy.pop(conn.transport, None)
        return conn.admitted

    def _warn(self, message: str, *args: object) -> None:
        """One line per minute at most: a flood of connections must not flood the log."""
        now = time.monotonic()
        if now - self._warned_at >= 60:
            self._warned_at = now
            log.warning("http: " + message, *args)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """Mark the request's connection busy while it is handled (it is not evicted)."""
        transport = request.transport
        self.busy[transport] = self.busy.get(transport, 0) + 1
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            left = self.busy.get(transport, 1) - 1
            if left > 0:
                self.busy[transport] = left
            else:
                self.busy.pop(transport, None)


class GuardedSite(web.BaseSite):
    """A TCP site (as aiohttp's own) whose every connection is counted by a guard."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard):
        super().__init__(runner, backlog=BACKLOG)
        self.host, self.port, self.guard = host, port, guard

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen, with the guard between the listener and aiohttp's protocol."""
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.wrap(server), self.host, self.port, backlog=self._backlog,
            reuse_address=True,
        )  # fmt: skip


CLIENT_TROUBLE = (http_exceptions.HttpProcessingError, ConnectionError)
"""What a client's own doing raises in aiohttp's server: garbage, a hang-up."""


class ClientTroubleFilter(logging.Filter):
    """Turns aiohttp's ERROR tracebacks for client trouble into one debug line of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CLIENT_TROUBLE):
            log.debug("http client trouble: %s: %s", type(exc).__name__, exc)
            return False
        return True


def quiet_client_trouble() -> None:
    """Install the filter on aiohttp's server logger (once)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientTroubleFilter) for f in logger.filters):
        logger.addFilter(ClientTroubleFilter())
