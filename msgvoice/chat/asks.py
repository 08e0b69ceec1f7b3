"""Ordinary messages waiting for the responder's answer, off the intake path.

A chat model may take seconds or a minute to answer, and the channels take messages in one at
a time, so an answer asked for while a message is routed would hold every other chat's `/tts`.
Instead the message is journalled (`asks`) and the router returns at once; `Conversations.run`
asks the model for each chat's oldest question, chats side by side and each chat in order, and
the answer goes out as the bot's reply. A restart mid-answer asks again: nothing is lost, and
a full disk (or no file descriptors left) while the answer is handed on is a state: the
question stays journalled and is asked again once there is room.

Each chat's conversation is journalled too (`turns`, the last HISTORY_TURNS messages, at most
HISTORY_CHARS of them), so the model sees what was said before, across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from msgvoice.chat.journal import Journal
from msgvoice.chat.port import next_ring
from msgvoice.chat.schema import now_ms
from msgvoice.chat.storage import Storage
from msgvoice.speech.speaker import exhausted

log = logging.getLogger(__name__)

AT_ONCE = 4
"""Chats whose answers are asked for at the same time."""
IDLE_RECHECK_S = 30.0
HISTORY_TURNS = 12
"""Messages of a chat's conversation kept for the model (six questions and answers)."""
HISTORY_CHARS = 4000
"""At most this much of them is sent (the newest), so a long chat stays within context."""

Turn = dict[str, str]
"""One message of a conversation as chat completions take it: role and content."""
Answer = Callable[[str, str, list[Turn]], Awaitable[str | None]]
"""(chat, question, the conversation before it) → the answer, or None."""


class Conversations:
    """The journalled questions and the loop that has them answered."""

    def __init__(
        self,
        journal: Journal,
        answer: Answer,
        reply: Callable[[str, str], Any],
        storage: Storage | None = None,
    ) -> None:
        self.journal, self.answer, self.reply, self.storage = journal, answer, reply, storage
        self._busy: dict[str, asyncio.Task[None]] = {}

    def ask(self, chat_id: str, text: str) -> None:
        """Journal a question for the chat's model answer."""
        self.journal.db.execute(
            "INSERT INTO asks (chat_id, text, created_at_ms) VALUES (?, ?, ?)",
            (chat_id, text, now_ms()),
        )
        self.journal.bell.ring(chat_id)

    def waiting(self) -> list[tuple[int, str, str]]:
        """(n, chat, text): each chat's oldest question, oldest chats first."""
        rows = self.journal.db.execute(
            "SELECT n, chat_id, text FROM asks WHERE n IN"
            " (SELECT MIN(n) FROM asks GROUP BY chat_id) ORDER BY n"
        ).fetchall()
        return [(int(r["n"]), str(r["chat_id"]), str(r["text"])) for r in rows]

    def history(self, chat_id: str) -> list[Turn]:
        """The chat's conversation so far, oldest first, within HISTORY_CHARS."""
        rows = self.journal.db.execute(
            "SELECT role, content FROM turns WHERE chat_id = ? ORDER BY n DESC LIMIT ?",
            (chat_id, HISTORY_TURNS),
        ).fetchall()
        kept: list[Turn] = []
        size = 0
        for row in rows:
            size += len(row["content"])
            if size > HISTORY_CHARS:
                break
            kept.append({"role": str(row["role"]), "content": str(row["content"])})
        return kept[::-1]

    def _remember(self, n: int, chat_id: str, question: str, answer: str | None) -> None:
        """In one transaction: the question is answered (gone from `asks`), and with an
        answer both join the conversation, which keeps its newest HISTORY_TURNS."""
        stamp = now_ms()
        with self.journal.transaction() as db:
            db.execute("DELETE FROM asks WHERE n = ?", (n,))
            if answer:
                db.executemany(
                    "INSERT INTO turns (chat_id, role, content, created_at_ms) VALUES (?, ?, ?, ?)",
                    [(chat_id, "user", question, stamp), (chat_id, "assistant", answer, stamp)],
                )
                db.execute(
                    "DELETE FROM turns WHERE chat_id = ? AND n NOT IN"
                    " (SELECT n FROM turns WHERE chat_id = ? ORDER BY n DESC LIMIT ?)",
                    (chat_id, chat_id, HISTORY_TURNS),
                )

    async def run(self) -> None:
        """Answer what waits, up to AT_ONCE chats at a time, until cancelled."""
        try:
            with self.journal.bell.listening() as bell:
                while True:
                    if self.storage is not None:
                        await self.storage.room.wait()
                    for n, chat_id, text in self.waiting():
                        if chat_id not in self._busy and len(self._busy) < AT_ONCE:
                            task = asyncio.create_task(self._answer(n, chat_id, text))
                            self._busy[chat_id] = task
                    await next_ring(bell, lambda _chat: True, IDLE_RECHECK_S)
        finally:
            for task in self._busy.values():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._busy.values(), return_exceptions=True)

    async def _answer(self, n: int, chat_id: str, text: str) -> None:
        try:
            # bounded by the responder's timeout
            answer = await self.answer(chat_id, text, self.history(chat_id))
            if answer:
                self.reply(chat_id, answer)
            self._remember(n, chat_id, text, answer)
        except Exception as exc:
            if self.storage is not None and exhausted(exc):
                self.storage.mark_full(f"answering chat={chat_id}: {exc}")  # asked again later
                return
            log.exception("answering chat=%s failed; the question is dropped", chat_id)
            self.journal.db.execute("DELETE FROM asks WHERE n = ?", (n,))
        finally:
            del self._busy[chat_id]
            self.journal.bell.ring(chat_id)  # the loop looks for this chat's next question
