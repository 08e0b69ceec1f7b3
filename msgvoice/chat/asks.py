"""Ordinary messages waiting for the responder's answer, off the intake path.

A chat model may take seconds or a minute to answer, and the channels take messages in one at
a time, so an answer asked for while a message is routed would hold every other chat's `/tts`.
Instead the message is journalled (`asks`) and the router returns at once; `Conversations.run`
asks the model for each chat's oldest question, chats side by side and each chat in order, and
the answer goes out as the bot's reply. A restart mid-answer asks again: nothing is lost.
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

log = logging.getLogger(__name__)

AT_ONCE = 4
"""Chats whose answers are asked for at the same time."""
IDLE_RECHECK_S = 30.0

Answer = Callable[[str, str], Awaitable[str | None]]


class Conversations:
    """The journalled questions and the loop that has them answered."""

    def __init__(self, journal: Journal, answer: Answer, reply: Callable[[str, str], Any]) -> None:
        self.journal, self.answer, self.reply = journal, answer, reply
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

    async def run(self) -> None:
        """Answer what waits, up to AT_ONCE chats at a time, until cancelled."""
        try:
            with self.journal.bell.listening() as bell:
                while True:
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
            answer = await self.answer(chat_id, text)  # bounded by the responder's timeout
            if answer:
                self.reply(chat_id, answer)
            self.journal.db.execute("DELETE FROM asks WHERE n = ?", (n,))
        except Exception:
            log.exception("answering chat=%s failed; the question is dropped", chat_id)
            self.journal.db.execute("DELETE FROM asks WHERE n = ?", (n,))
        finally:
            del self._busy[chat_id]
            self.journal.bell.ring(chat_id)  # the loop looks for this chat's next question
