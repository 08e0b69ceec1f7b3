"""Pushes a channel's outbox to its chat app: in order per chat, never across chats; at least
once, never again once the app acknowledged an item.

Whatever a send raises belongs to the item being sent, never to the pump or the channel:
- a transient failure (network, 5xx, 429, the app restarting, an OS error such as EMFILE)
  holds back only that chat: its item is retried after a growing back-off, or after the app's
  own `retry_after`, while other chats are served; one that has not healed after
  `GIVE_UP_AFTER_S` marks the item failed;
- a permanent refusal (the user blocked the bot, the bot was kicked, the chat is gone, a voice
  note that cannot be read) marks the item failed at once;
- a refusal the app does not explain (OneBot's catch-all "failed": a hiccup or a group the bot
  left, it cannot say) is tried the few times the channel names (`ChannelError.tries`);
- anything else (a bug, an exception nobody listed) is logged once with its traceback, and
  after `UNEXPECTED_TRIES` tries the item is marked failed with the error as its reason.
A failed item carries its reason in the journal (the outbox's `error`, the job's `delivery`,
`/metrics`), and the chat's next item goes on. An item the app took but the journal could not
record is not sent again: only its acknowledgement is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from msgvoice.chat.port import ChatPort, OutboxItem, keep_running, next_ring
from msgvoice.net import next_backoff

log = logging.getLogger(__name__)

Send = Callable[[OutboxItem], Awaitable[None]]
T = TypeVar("T")
IDLE_RECHECK_S = 30.0
RETRY_AT_LEAST_S = 0.001
GIVE_UP_AFTER_S = 6 * 3600.0
"""A transient failure that lasts this long (since the item's first failed try) fails it."""
UNEXPECTED_TRIES = 3
"""Tries of an item whose send raises something unexpected before it is marked failed."""


async def serve(
    name: str,
    intake: Callable[[], Awaitable[None]],
    delivery: Callable[[], Awaitable[None]],
    stop_on: tuple[type[Exception], ...],
) -> None:
    """A channel's intake and delivery, each under `keep_running`, so neither can stop the
    other; one of `stop_on` raised by the intake (credentials the app refuses) ends both."""
    async with asyncio.TaskGroup() as group:
        group.create_task(keep_running(f"{name} intake", intake, stop_on=stop_on))
        group.create_task(keep_running(f"{name} delivery", delivery))


async def wait_out(what: str, exc: ChannelError, backoff: float) -> float:
    """After a failed poll or login: sleep the app's `retry_after`, else the next back-off
    (logged); returns the back-off, for the next failure to grow."""
    backoff = next_backoff(backoff)
    wait = exc.retry_after_s if exc.retry_after_s is not None else backoff
    log.warning("%s failed, retrying in %.1fs: %s", what, wait, exc)
    await asyncio.sleep(wait)
    return backoff


class PartsOnce:
    """The parts of each multi-part item the app took, so a retry sends only the rest."""

    def __init__(self) -> None:
        self._sent: dict[tuple[str, int], int] = {}

    async def send(
        self, item: OutboxItem, parts: Sequence[T], one: Callable[[int, T], Awaitable[None]]
    ) -> None:
        key = (item.chat_id, item.seq)
        for n in range(self._sent.get(key, 0), len(parts)):
            await one(n, parts[n])
            self._sent[key] = n + 1
        self._sent.pop(key, None)


class ChannelError(RuntimeError):
    """A send or poll the chat app did not accept. `permanent`: it never will (the pump
    marks the item failed); otherwise worth retrying, after `retry_after_s` if the app said,
    and at most `tries` times in all when the app cannot tell whether it ever will."""

    def __init__(
        self,
        message: str,
        retry_after_s: float | None = None,
        *,
        permanent: bool = False,
        tries: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.permanent = permanent
        self.tries = tries


@dataclass
class _Trouble:
    """One item's failed tries: when the first was, and how many."""

    since: float
    tries: int = 0


class OutboxPump:
    """Delivers the outbox items of chats whose id starts with `prefix`."""

    def __init__(
        self,
        chat: ChatPort,
        prefix: str,
        send: Send,
        clock: Callable[[], float] = time.monotonic,
        give_up_after_s: float = GIVE_UP_AFTER_S,
    ) -> None:
        self.chat, self.prefix, self.send, self.clock = chat, prefix, send, clock
        self.give_up_after_s = give_up_after_s
        self._backoff_s: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        """chat → monotonic time before which it is not tried again."""
        self._troubles: dict[tuple[str, int], _Trouble] = {}
        self._unacked: set[tuple[str, int]] = set()
        """Items the app took whose acknowledgement the journal did not record yet."""

    async def run(self) -> None:
        """Send whatever is pending; sleep until the next retry is due or the bell rings for
        one of this channel's chats (or a periodic look). A round that cannot even read the
        journal is logged and tried again after a back-off: the pump never ends by itself."""
        backoff = 0.0
        with self.chat.bell.listening() as changes:
            while True:
                try:
                    retry_in = await self.drain()
                    backoff = 0.0
                except Exception as exc:  # the journal itself: the items stay where they are
                    if not backoff:
                        log.exception("outbox %s: a delivery round failed", self.prefix)
                    backoff = next_backoff(backoff)
                    retry_in = backoff
                    log.warning("outbox %s: next round in %.0fs (%s)", self.prefix, backoff, exc)
                wait = IDLE_RECHECK_S if retry_in is None else retry_in
                await next_ring(changes, self._ours, wait)

    def _ours(self, chat_id: str) -> bool:
        return chat_id.startswith(self.prefix)

    async def drain(self) -> float | None:
        """Send pending items in each chat's order; None when nothing waits for a retry,
        else seconds until the earliest one."""
        now = self.clock()
        self._retry_at = {chat: at for chat, at in self._retry_at.items() if at > now}
        held = set(self._retry_at)
        for item in self.chat.pending(self.prefix, skip=held):
            if item.chat_id in held:
                continue  # an earlier item of this chat failed in this round
            if not await self._deliver(item):
                held.add(item.chat_id)
        if not self._retry_at:
            return None
        # A chat whose time came while this round ran is due now, not at the idle recheck.
        return max(min(self._retry_at.values()) - self.clock(), RETRY_AT_LEAST_S)

    async def _deliver(self, item: OutboxItem) -> bool:
        """Send one item and record the outcome; False when its chat is held back."""
        key = (item.chat_id, item.seq)
        if key not in self._unacked:
            try:
                await self.send(item)
            except Exception as exc:  # whatever it is, it is this item's
                return not self._failed(item, exc)
            self._unacked.add(key)
        try:
            self.chat.ack(item)
        except Exception as exc:  # sent, not recorded: hold the chat, acknowledge later
            self._hold(item, f"sent, but the journal did not record it: {exc}", None)
            return False
        self._unacked.discard(key)
        self._troubles.pop(key, None)
        self._backoff_s.pop(item.chat_id, None)
        self._retry_at.pop(item.chat_id, None)
        return True

    def _failed(self, item: OutboxItem, exc: Exception) -> bool:
        """One failed try: hold the chat, or mark the item failed (refused, or out of tries
        or time); returns whether the chat is held."""
        key = (item.chat_id, item.seq)
        trouble = self._troubles.setdefault(key, _Trouble(since=self.clock()))
        trouble.tries += 1
        known = isinstance(exc, ChannelError | OSError)
        if isinstance(exc, OSError):
            self.chat.storage_trouble(exc)  # a full disk is the daemon's state, not the item's
        if not known and trouble.tries == 1:
            log.exception("send to %s (seq %d) raised", item.chat_id, item.seq)
        reason = str(exc) if isinstance(exc, ChannelError) else f"{type(exc).__name__}: {exc}"
        limit = exc.tries if isinstance(exc, ChannelError) else None if known else UNEXPECTED_TRIES
        if isinstance(exc, ChannelError) and exc.permanent:
            self._refuse(item, reason, "refused for good")
        elif limit is not None and trouble.tries >= limit:
            self._refuse(item, reason, f"failed {trouble.tries} times")
        elif self.clock() - trouble.since >= self.give_up_after_s:
            self._refuse(item, reason, f"still failing after {self.give_up_after_s:.0f}s")
        else:
            self._hold(item, reason, exc.retry_after_s if isinstance(exc, ChannelError) else None)
            return True
        return False

    def _refuse(self, item: OutboxItem, reason: str, why: str) -> None:
        self.chat.refuse(item, reason)
        self._troubles.pop((item.chat_id, item.seq), None)
        log.error("send to %s (seq %d) %s, marked failed: %s", item.chat_id, item.seq, why, reason)

    def _hold(self, item: OutboxItem, reason: str, retry_after_s: float | None) -> None:
        backoff = next_backoff(self._backoff_s.get(item.chat_id, 0.0))
        self._backoff_s[item.chat_id] = backoff
        wait = retry_after_s if retry_after_s is not None else backoff
        self._retry_at[item.chat_id] = self.clock() + wait
        log.warning(
            "send to %s (seq %d) failed, retrying that chat in %.1fs: %s",
            item.chat_id,
            item.seq,
            wait,
            reason,
        )
