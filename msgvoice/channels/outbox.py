"""Pushes a channel's outbox to its chat app, in order, at least once, never twice once acked.

A row is marked sent only after the app acknowledged it; a failure stops the pump (keeping
order) and retries with a growing back-off, or after the app's own `retry_after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from msgvoice.chat.port import ChatPort, OutboxItem
from msgvoice.net import next_backoff

log = logging.getLogger(__name__)

Send = Callable[[OutboxItem], Awaitable[None]]
IDLE_RECHECK_S = 30.0


def prefixed(allow: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    """An allow-list names the app's own ids; chats are journalled as <prefix><id>."""
    return allow + tuple(f"{prefix}{a}" for a in allow)


class ChannelError(RuntimeError):
    """A send or poll the chat app did not accept (network, 5xx, protocol); worth retrying."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OutboxPump:
    """Delivers the outbox rows of chats whose id starts with `prefix`."""

    def __init__(self, chat: ChatPort, prefix: str, send: Send) -> None:
        self.chat, self.prefix, self.send = chat, prefix, send
        self.backoff_s = 0.0

    async def run(self) -> None:
        """Send whatever is pending; after a failure wait out the back-off, else wait for the
        bell (or a periodic look)."""
        changes = self.chat.bell.subscribe()
        try:
            while True:
                retry_in = await self.drain()
                if retry_in is not None:
                    await asyncio.sleep(retry_in)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_RECHECK_S):
                        while not (await changes.get()).startswith(self.prefix):
                            pass
        finally:
            self.chat.bell.unsubscribe(changes)

    async def drain(self) -> float | None:
        """Send pending rows in order; None when all went, else seconds until a retry."""
        for item in self.chat.pending(self.prefix):
            try:
                await self.send(item)
            except ChannelError as exc:
                self.backoff_s = next_backoff(self.backoff_s)
                wait = exc.retry_after_s if exc.retry_after_s is not None else self.backoff_s
                log.warning(
                    "send to %s (seq %d) failed, retrying in %.1fs: %s",
                    item.chat_id,
                    item.seq,
                    wait,
                    exc,
                )
                return wait
            self.chat.ack(item)
        self.backoff_s = 0.0
        return None
