"""The chat wing's contract: what channels hand in, what they get back, and how they wait.

A channel turns its app's events into `Incoming` messages and bot replies, calls the
`ChatPort` (the router), and delivers `OutboxItem`s in order, acknowledging each. It learns
that a chat changed through the `Bell`. Nothing else of the chat wing is a channel's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from msgvoice.net import next_backoff

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "superseded"]
DeliveryState = Literal["pending", "sent", "failed"]
"""An outbox item: waiting for its channel, acknowledged by the app, or refused for good."""
FINAL_STATES: tuple[JobState, ...] = ("done", "failed", "superseded")


@dataclass(frozen=True)
class Incoming:
    """One message from a chat. `text` None: the app sent something that is not text."""

    chat_id: str
    text: str | None
    sender: str | None = None
    allow: Sequence[str] = ()
    """The channel's allow-list (chat ids or senders); empty lets everyone in."""
    group: bool = False
    """A group chat: a command that is not ours, or anything but text, is for someone else."""


@dataclass
class Outcome:
    """What a message caused: jobs queued and text replies sent."""

    jobs: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    ignored: bool = False


@dataclass(frozen=True)
class OutboxItem:
    """One message for a chat, in the chat's order (`seq`)."""

    chat_id: str
    seq: int
    kind: Literal["text", "audio"]
    created_at_ms: int
    text: str | None = None
    audio: Path | None = None
    """The voice note's file."""
    job_id: str | None = None
    duration_s: float | None = None
    """The voice note's length."""
    state: DeliveryState = "pending"
    error: str | None = None
    """Why the app refused it for good (state failed)."""


@dataclass(frozen=True)
class Job:
    """A synthesis job as journalled."""

    id: str
    chat_id: str
    kind: Literal["tts", "auto"]
    state: JobState
    text: str
    style: str | None
    emotion: dict[str, Any] | None
    audio_name: str | None
    audio_format: str | None
    duration_s: float | None
    error: str | None
    timings: dict[str, float] | None
    created_at_ms: int
    engine: str | None = None
    fallback_from: str | None = None
    speaker: str | None = None


class Bell:
    """Rings for every chat whose outbox or jobs changed; each listener has its own queue."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[str]] = []

    def subscribe(self) -> asyncio.Queue[str]:
        """A queue that receives the chat id of every change from now on."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        """Stop receiving changes."""
        self._queues.remove(queue)

    def ring(self, chat_id: str) -> None:
        """Tell every listener that `chat_id` changed."""
        for queue in self._queues:
            queue.put_nowait(chat_id)

    @contextlib.contextmanager
    def listening(self) -> Iterator[asyncio.Queue[str]]:
        """A subscribed queue for the length of a `with` block."""
        queue = self.subscribe()
        try:
            yield queue
        finally:
            self.unsubscribe(queue)


async def next_ring(
    changes: asyncio.Queue[str], wanted: Callable[[str], bool], within_s: float
) -> str | None:
    """The next chat id from a bell's queue that `wanted` accepts, or None after `within_s`."""
    try:
        async with asyncio.timeout(within_s):
            while not wanted(rung := await changes.get()):
                pass
    except TimeoutError:
        return None
    return rung


HEALTHY_RUN_S = 60.0
"""A loop that ran this long before failing starts its back-off afresh."""


async def keep_running(
    name: str,
    run: Callable[[], Awaitable[None]],
    restarts: dict[str, int] | None = None,
    first_backoff_s: float = 0.5,
    stop_on: tuple[type[Exception], ...] = (),
) -> None:
    """Run `run` until it returns: a failure is logged once with its traceback, counted in
    `restarts[name]`, and `run` started again after a growing back-off; one of `stop_on`
    (a token the app refuses) is the loop's deliberate end and goes to the caller. A
    channel's intake and its delivery each run under one of these, so neither can stop the
    other."""
    backoff = 0.0
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await run()
            return
        except stop_on:
            raise
        except Exception:
            log.exception("task %s failed; restarting it", name)
            if restarts is not None:
                restarts[name] = restarts.get(name, 0) + 1
        if loop.time() - started > HEALTHY_RUN_S:
            backoff = 0.0
        backoff = next_backoff(backoff, first_s=first_backoff_s)
        await asyncio.sleep(backoff)


ID_MAX = 256
"""Longest chat id or sender accepted."""


def bad_id(value: str) -> str | None:
    """Why `value` cannot be a chat id or sender (too long, empty, control characters, not
    valid Unicode), or None when it can."""
    if not value.strip():
        return "is empty"
    if len(value) > ID_MAX:
        return f"is longer than {ID_MAX} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "has control characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode"
    return None


def allowed(allow: Sequence[str], chat_id: str, sender: str | None) -> bool:
    """An empty allow-list lets everyone in; otherwise the chat (or, for a sub-conversation
    `<chat>#<thread>` such as a forum topic, its chat) or the sender must be on it."""
    base = chat_id.partition("#")[0]
    return (
        not allow or chat_id in allow or base in allow or (sender is not None and sender in allow)
    )


class ChatPort(Protocol):
    """What channels call."""

    bell: Bell

    async def message(self, incoming: Incoming) -> Outcome:
        """Handle one chat message (commands, plain text, or a non-text event)."""
        ...

    def bot_reply(self, chat_id: str, text: str) -> Outcome:
        """A bot's reply to a chat, voiced per the chat's voice mode."""
        ...

    def send_text(self, chat_id: str, text: str) -> None:
        """Send a text to a chat (through its outbox)."""
        ...

    def phrase(self, chat_id: str, key: str, **values: str) -> str:
        """One of the bot's sentences (see the phrasebook), in the chat's language."""
        ...

    def pending(
        self, prefix: str, limit: int = 100, skip: Collection[str] = ()
    ) -> list[OutboxItem]:
        """Unacknowledged items of the chats whose ids start with `prefix` (but not those in
        `skip`), oldest first."""
        ...

    def ack(self, item: OutboxItem) -> None:
        """The app accepted `item`: it is never sent again."""
        ...

    def refuse(self, item: OutboxItem, reason: str) -> None:
        """The app refused `item` for good (blocked, kicked, unknown chat): it is marked
        failed with the reason and never sent again; the chat's later items go on."""
        ...

    def outbox(self, chat_id: str, after: int = 0) -> list[OutboxItem] | None:
        """A chat's items after `after`, in order; None for a chat never seen."""
        ...

    def job(self, job_id: str) -> Job | None:
        """A job by id."""
        ...

    def delivery(self, job_id: str) -> OutboxItem | None:
        """The outbox item a job produced (its voice note or failure notice), if any."""
        ...

    def cursor(self, name: str) -> str | None:
        """A channel's saved position (Telegram offset, iMessage rowid)."""
        ...

    def storage_full(self) -> str | None:
        """Why no new work is taken (the state dir is full), or None."""
        ...

    def storage_trouble(self, exc: BaseException) -> bool:
        """Whether `exc` means the state dir is full (then it is marked so)."""
        ...

    def set_cursor(self, name: str, value: str) -> None:
        """Save a channel's position."""
        ...

    def move_chat(self, old: str, new: str) -> None:
        """A chat got a new id (a Telegram group became a supergroup): its settings go along."""
        ...
