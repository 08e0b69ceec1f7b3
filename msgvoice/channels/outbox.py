"""Pushes a channel's outbox to its chat app: in order per chat, never across chats; at least
once, never again once the app acknowledged an item.

A transient failure (network, 5xx, 429, the app restarting) holds back only that chat: its
item is retried after a growing back-off, or after the app's own `retry_after`, while other
chats are served. A permanent refusal (the user blocked the bot, the bot was kicked, the chat
is gone) marks that item failed in the journal, with the reason, and the pump moves on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from msgvoice.chat.port import ChatPort, OutboxItem, next_ring
from msgvoice.net import next_backoff

log = logging.getLogger(__name__)

Send = Callable[[OutboxItem], Awaitable[None]]
IDLE_RECHECK_S = 30.0


def prefixed(allow: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    """An allow-list names the app's own ids; chats are journalled as <prefix><id>."""
    return allow + tuple(f"{prefix}{a}" for a in allow)


class ChannelError(RuntimeError):
    """A send or poll the chat app did not accept. `permanent`: it never will (the pump
    marks the item failed); otherwise worth retrying, after `retry_after_s` if the app said."""

    def __init__(
        self, message: str, retry_after_s: float | None = None, *, permanent: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.permanent = permanent


class OutboxPump:
    """Delivers the outbox items of chats whose id starts with `prefix`."""

    def __init__(
        self, chat: ChatPort, prefix: str, send: Send, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.chat, self.prefix, self.send, self.clock = chat, prefix, send, clock
        self._backoff_s: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        """chat → monotonic time before which it is not tried again."""

    async def run(self) -> None:
        """Send whatever is pending; sleep until the next retry is due or the bell rings for
        one of this channel's chats (or a periodic look)."""
        with self.chat.bell.listening() as changes:
            while True:
                retry_in = await self.drain()
                await next_ring(changes, self._ours, retry_in or IDLE_RECHECK_S)

    def _ours(self, chat_id: str) -> bool:
        return chat_id.startswith(self.prefix)

    async def drain(self) -> float | None:
        """Send pending items in each chat's order; None when nothing waits for a retry,
        else seconds until the earliest one."""
        now = self.clock()
        held = {chat for chat, at in self._retry_at.items() if at > now}
        for item in self.chat.pending(self.prefix, skip=held):
            if item.chat_id in held:
                continue  # an earlier item of this chat failed in this round
            try:
                await self.send(item)
            except ChannelError as exc:
                if exc.permanent:
                    self._refuse(item, exc)
                else:
                    self._hold(item, exc)
                    held.add(item.chat_id)
                continue
            self.chat.ack(item)
            self._backoff_s.pop(item.chat_id, None)
            self._retry_at.pop(item.chat_id, None)
        now = self.clock()
        self._retry_at = {chat: at for chat, at in self._retry_at.items() if at > now}
        return min(self._retry_at.values()) - now if self._retry_at else None

    def _refuse(self, item: OutboxItem, exc: ChannelError) -> None:
        self.chat.refuse(item, str(exc))
        log.error(
            "send to %s (seq %d) refused for good, marked failed: %s", item.chat_id, item.seq, exc
        )

    def _hold(self, item: OutboxItem, exc: ChannelError) -> None:
        backoff = next_backoff(self._backoff_s.get(item.chat_id, 0.0))
        self._backoff_s[item.chat_id] = backoff
        wait = exc.retry_after_s if exc.retry_after_s is not None else backoff
        self._retry_at[item.chat_id] = self.clock() + wait
        log.warning(
            "send to %s (seq %d) failed, retrying that chat in %.1fs: %s",
            item.chat_id,
            item.seq,
            wait,
            exc,
        )
