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
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from msgvoice.chat.port import ChatPort, Incoming, OutboxItem, keep_running, next_ring
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


def prefixed(allow: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    """An allow-list names the app's own ids; chats are journalled as <prefix><id>."""
    return allow + tuple(f"{prefix}{a}" for a in allow)


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
