"""A channel's intake: each incoming event its own failure (`take_in`, `InOrder`), which group
messages are the bot's (`addressed`), allow-lists in the app's own ids (`prefixed`), and
events an app pushes twice answered once (`Recent`)."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from msgvoice.chat.port import Incoming
from msgvoice.net import next_backoff

log = logging.getLogger(__name__)

T = TypeVar("T")


def prefixed(allow: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    """An allow-list names the app's own ids; chats are journalled as <prefix><id>."""
    return allow + tuple(f"{prefix}{a}" for a in allow)


INTAKE_TRIES = 3
"""Tries of one incoming message whose handling raises before it is passed over."""


async def take_in(what: str, handle: Callable[[T], Awaitable[object]], event: T) -> None:
    """Handle one incoming event; a failure is that event's alone: logged (the traceback
    once), tried again after a short back-off, and after `INTAKE_TRIES` passed over with an
    error, so one message that cannot be handled never stops a channel's intake."""
    backoff = 0.0
    for attempt in range(1, INTAKE_TRIES + 1):
        try:
            await handle(event)
            return
        except Exception as exc:
            if attempt == 1:
                log.exception("%s could not be handled", what)
            if attempt == INTAKE_TRIES:
                log.error("%s passed over after %d tries: %s", what, attempt, exc)
                return
            backoff = next_backoff(backoff, first_s=0.5)
            await asyncio.sleep(backoff)


class InOrder(Generic[T]):
    """A connection's events, handled one at a time in the order they came, each under
    `take_in` (so one that cannot be handled is its own failure), beside the connection."""

    def __init__(self, handle: Callable[[T], Awaitable[object]]) -> None:
        self.handle = handle
        self._queue: asyncio.Queue[tuple[str, T]] = asyncio.Queue()

    def put(self, what: str, event: T) -> None:
        """Queue `event` (named `what` in the log if it fails)."""
        self._queue.put_nowait((what, event))

    async def beside(self, connection: Awaitable[None]) -> None:
        """Run `connection`, handling what it puts meanwhile; the handling ends with it."""
        handling = asyncio.create_task(self._handle())
        try:
            await connection
        finally:
            handling.cancel()

    async def _handle(self) -> None:
        while True:
            what, event = await self._queue.get()
            await take_in(what, self.handle, event)


def addressed(
    chat: str,
    text: str | None,
    sender: str | None,
    allow: tuple[str, ...],
    *,
    group: bool,
    mentioned: bool,
) -> Incoming | None:
    """A message as the router takes it, or None for a group talking among itself: in a
    group, one that @-mentions the bot is addressed to it as a private one is; one that does
    not must be a command (and the router leaves other bots' commands alone)."""
    if group and not mentioned and not (text or "").startswith("/"):
        return None
    return Incoming(chat, text, sender, allow, group and not mentioned)


class Recent:
    """The last `size` keys seen (message or event ids), so one an app pushes twice, on a
    new connection or after a lost acknowledgement, is handled once."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._keys: collections.OrderedDict[Hashable, None] = collections.OrderedDict()

    def again(self, key: Hashable) -> bool:
        """Whether `key` was seen already (and, either way, it is remembered now)."""
        if key in self._keys:
            return True
        self._keys[key] = None
        while len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return False
