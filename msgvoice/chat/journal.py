"""The journal: chat settings, jobs and each chat's outbox, in sqlite (WAL).

Every state change is one transaction, so a crash at any point leaves either the old or the new
state. An automatic reply records itself as its chat's latest in the same transaction that
supersedes the chat's queued older one, and a finished job is delivered (outbox row) or
superseded in one transaction with the latest-check, so stale audio can never be journalled.
Every change to a chat's jobs or outbox rings the bell for that chat.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msgvoice.chat.port import Bell, Job, OutboxItem
from msgvoice.chat.schema import ITEMS, append_item, connect, ensure_chat, now_ms, to_item, to_job

VOICE_MODE_DEFAULT = "text"
LANG_DEFAULT = "zh"
IN_MEMORY = Path(":memory:")
SETTINGS = ("voice_mode", "style", "speaker", "lang")


@dataclass(frozen=True)
class Chat:
    """A chat's settings."""

    chat_id: str
    voice_mode: str = VOICE_MODE_DEFAULT
    style: str | None = None
    speaker: str | None = None
    lang: str = LANG_DEFAULT


class Journal:
    """The sqlite journal; calls are short and synchronous (WAL, NORMAL sync)."""

    def __init__(self, path: Path, bell: Bell, audio_dir: Path) -> None:
        if path != IN_MEMORY:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.bell, self.audio_dir = path, bell, audio_dir
        self._db = connect(path)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for queries that serve one reader (retention's, asks')."""
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- chats -------------------------------------------------------------------------------

    def chat(self, chat_id: str) -> Chat:
        """A chat's settings (defaults for a chat never seen)."""
        row = self._db.execute(
            "SELECT voice_mode, style, speaker, lang FROM chats WHERE chat_id = ?", (chat_id,)
        ).fetchone()
        if row is None:
            return Chat(chat_id)
        lang = row["lang"] or LANG_DEFAULT
        return Chat(chat_id, row["voice_mode"], row["style"], row["speaker"], lang)

    def known_chat(self, chat_id: str) -> bool:
        """Whether the chat ever sent or received anything."""
        row = self._db.execute("SELECT 1 FROM chats WHERE chat_id = ?", (chat_id,)).fetchone()
        return row is not None

    def touch_chat(self, chat_id: str) -> None:
        """Record that a chat exists."""
        ensure_chat(self._db, chat_id, now_ms())

    def update_chat(self, chat_id: str, **values: str | None) -> Chat:
        """Set voice_mode and/or style for a chat."""
        self.touch_chat(chat_id)
        for column, value in values.items():
            if column not in SETTINGS:
                raise ValueError(f"not a chat setting: {column}")
            self._db.execute(
                f"UPDATE chats SET {column} = ?, updated_at_ms = ? WHERE chat_id = ?",
                (value, now_ms(), chat_id),
            )
        return self.chat(chat_id)

    def move_chat(self, old: str, new: str) -> None:
        """Give `new` the settings and conversation of `old` (the same chat under a new id)."""
        if self.known_chat(old):
            was = self.chat(old)
            self.update_chat(new, **{name: getattr(was, name) for name in SETTINGS})
            self.db.execute("UPDATE turns SET chat_id = ? WHERE chat_id = ?", (new, old))

    # -- jobs --------------------------------------------------------------------------------

    def add_job(
        self, chat_id: str, kind: str, text: str, style: str | None, speaker: str | None = None
    ) -> tuple[str, list[str]]:
        """Journal a queued job; for an automatic reply, make it the chat's latest and
        supersede the chat's queued older ones. Returns (job id, superseded ids)."""
        job_id = uuid.uuid4().hex[:16]
        stamp = now_ms()
        superseded: list[str] = []
        with self.transaction() as db:
            ensure_chat(db, chat_id, stamp)
            if kind == "auto":
                superseded = [
                    r["id"]
                    for r in db.execute(
                        "SELECT id FROM jobs"
                        " WHERE chat_id = ? AND kind = 'auto' AND state = 'queued'",
                        (chat_id,),
                    )
                ]
                db.execute(
                    "UPDATE jobs SET state = 'superseded', updated_at_ms = ?"
                    " WHERE chat_id = ? AND kind = 'auto' AND state = 'queued'",
                    (stamp, chat_id),
                )
                db.execute(
                    "UPDATE chats SET latest_auto_job = ? WHERE chat_id = ?", (job_id, chat_id)
                )
            db.execute(
                "INSERT INTO jobs (id, chat_id, kind, state, text, style, speaker,"
                " created_at_ms, updated_at_ms) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, chat_id, kind, text, style, speaker, stamp, stamp),
            )
        self.bell.ring(chat_id)
        return job_id, superseded

    def job(self, job_id: str) -> Job | None:
        """A job by id."""
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return to_job(row) if row else None

    def open_jobs(self) -> list[Job]:
        """Jobs left queued or running (by a crash), oldest first."""
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY n"
        ).fetchall()
        return [to_job(r) for r in rows]

    def is_latest(self, job: Job) -> bool:
        """Whether an automatic reply is still its chat's latest (tts jobs always are)."""
        if job.kind != "auto":
            return True
        row = self._db.execute(
            "SELECT latest_auto_job FROM chats WHERE chat_id = ?", (job.chat_id,)
        ).fetchone()
        return row is not None and row["latest_auto_job"] == job.id

    def set_state(self, job: Job, state: str, error: str | None = None) -> None:
        """Move a job to running, queued, superseded or failed (without delivery)."""
        self._db.execute(
            "UPDATE jobs SET state = ?, error = COALESCE(?, error), updated_at_ms = ? WHERE id = ?",
            (state, error, now_ms(), job.id),
        )
        self.bell.ring(job.chat_id)

    def finish(
        self,
        job: Job,
        *,
        audio_name: str,
        audio_format: str,
        duration_s: float,
        emotion: dict[str, Any],
        timings: dict[str, float],
        engine: str,
        fallback_from: str | None = None,
    ) -> bool:
        """Deliver a finished job's audio, unless a newer automatic reply made it stale.
        Returns whether it was delivered."""
        with self.transaction() as db:
            latest = self.is_latest(job)
            db.execute(
                "UPDATE jobs SET state = ?, audio_name = ?, audio_format = ?, duration_s = ?,"
                " emotion = ?, timings = ?, engine = ?, fallback_from = ?, updated_at_ms = ?"
                " WHERE id = ?",
                (
                    "done" if latest else "superseded",
                    audio_name,
                    audio_format,
                    duration_s,
                    json.dumps(emotion),
                    json.dumps(timings),
                    engine,
                    fallback_from,
                    now_ms(),
                    job.id,
                ),
            )
            if latest:
                append_item(db, job.chat_id, "audio", audio_name=audio_name, job_id=job.id)
        self.bell.ring(job.chat_id)
        return latest

    def fail(self, job: Job, error: str, notice: str) -> bool:
        """Fail a job and tell its chat, unless it was a stale automatic reply (then it is
        superseded quietly). Returns whether the chat was told."""
        with self.transaction() as db:
            latest = self.is_latest(job)
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at_ms = ? WHERE id = ?",
                ("failed" if latest else "superseded", error, now_ms(), job.id),
            )
            if latest:
                append_item(db, job.chat_id, "text", text=notice, job_id=job.id)
        self.bell.ring(job.chat_id)
        return latest

    # -- outbox ------------------------------------------------------------------------------

    def add_text(self, chat_id: str, text: str) -> int:
        """Append a text message to a chat's outbox; returns its sequence number."""
        with self.transaction() as db:
            ensure_chat(db, chat_id, now_ms())
            seq = append_item(db, chat_id, "text", text=text)
        self.bell.ring(chat_id)
        return seq

    def outbox(self, chat_id: str, after: int = 0, limit: int = 500) -> list[OutboxItem]:
        """A chat's outbox items after `after`, in order."""
        rows = self._db.execute(
            f"{ITEMS} WHERE o.chat_id = ? AND o.seq > ? ORDER BY o.seq LIMIT ?",
            (chat_id, after, limit),
        ).fetchall()
        return [to_item(r, self.audio_dir) for r in rows]

    def unsent(self, prefix: str, limit: int = 100, skip: Collection[str] = ()) -> list[OutboxItem]:
        """Outbox items of a push channel's chats (ids starting with `prefix`, except those
        in `skip`) neither acknowledged nor refused, oldest first."""
        marks = ",".join("?" * len(skip))
        rows = self._db.execute(
            f"{ITEMS} WHERE o.sent_at_ms IS NULL AND o.failed_at_ms IS NULL"
            f" AND substr(o.chat_id, 1, ?) = ? AND o.chat_id NOT IN ({marks})"
            " ORDER BY o.created_at_ms, o.seq LIMIT ?",
            (len(prefix), prefix, *skip, limit),
        ).fetchall()
        return [to_item(r, self.audio_dir) for r in rows]

    def mark_sent(self, chat_id: str, seq: int) -> None:
        """Record that a push channel delivered an outbox item."""
        self._db.execute(
            "UPDATE outbox SET sent_at_ms = ? WHERE chat_id = ? AND seq = ?",
            (now_ms(), chat_id, seq),
        )

    def mark_failed(self, chat_id: str, seq: int, error: str) -> None:
        """Record that the app refused an outbox item for good."""
        self._db.execute(
            "UPDATE outbox SET failed_at_ms = ?, error = ? WHERE chat_id = ? AND seq = ?",
            (now_ms(), error, chat_id, seq),
        )
        self.bell.ring(chat_id)

    def delivery(self, job_id: str) -> OutboxItem | None:
        """The outbox item a job produced (its voice note, or its failure notice)."""
        row = self._db.execute(f"{ITEMS} WHERE o.job_id = ? ORDER BY o.seq", (job_id,)).fetchone()
        return to_item(row, self.audio_dir) if row else None

    def integrity(self) -> str:
        """sqlite's own check of the journal ("ok" when sound)."""
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    # -- cursors -----------------------------------------------------------------------------

    def cursor(self, name: str) -> str | None:
        """A channel's saved position (Telegram offset, iMessage rowid)."""
        row = self._db.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
        return str(row["value"]) if row else None

    def set_cursor(self, name: str, value: str) -> None:
        """Save a channel's position."""
        self._db.execute(
            "INSERT INTO cursors (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def counts(self) -> dict[str, int]:
        """Jobs by state (for metrics and doctor)."""
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {r["state"]: int(r["n"]) for r in rows}
