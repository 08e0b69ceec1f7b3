"""The journal: chat settings, jobs and each chat's outbox, in sqlite (WAL).

Every state change is one transaction, so a crash at any point leaves either the old or the new
state. An automatic reply records itself as its chat's latest in the same transaction that
supersedes the chat's queued older one, and a finished job is delivered (outbox row) or
superseded in one transaction with the latest-check, so stale audio can never be journalled.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msgvoice.replies import DEFAULT_LANG

SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    chat_id TEXT PRIMARY KEY,
    voice_mode TEXT NOT NULL DEFAULT 'text',
    style TEXT,
    speaker TEXT,
    lang TEXT,
    latest_auto_job TEXT,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    chat_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('tts', 'auto')),
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'superseded')),
    text TEXT NOT NULL,
    style TEXT,
    emotion TEXT,
    audio_name TEXT,
    audio_format TEXT,
    duration_s REAL,
    error TEXT,
    timings TEXT,
    engine TEXT,
    fallback_from TEXT,
    speaker TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (state) WHERE state IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS outbox (
    chat_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('text', 'audio')),
    text TEXT,
    audio_name TEXT,
    job_id TEXT,
    created_at_ms INTEGER NOT NULL,
    sent_at_ms INTEGER,
    PRIMARY KEY (chat_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_job_once ON outbox (job_id, kind) WHERE job_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

VOICE_MODE_DEFAULT = "text"


def now_ms() -> int:
    """Wall-clock milliseconds (for journal timestamps)."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Chat:
    """A chat's settings."""

    chat_id: str
    voice_mode: str = VOICE_MODE_DEFAULT
    style: str | None = None
    speaker: str | None = None
    lang: str = DEFAULT_LANG


@dataclass(frozen=True)
class Job:
    """A synthesis job as journalled."""

    id: str
    chat_id: str
    kind: str
    state: str
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


class Store:
    """The sqlite journal. Calls are short and synchronous (WAL, NORMAL sync)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        for table, column in (
            ("jobs", "engine"),
            ("jobs", "fallback_from"),
            ("jobs", "speaker"),
            ("chats", "speaker"),
            ("chats", "lang"),
        ):
            columns = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:  # a journal from before this column
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
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
        lang = row["lang"] or DEFAULT_LANG
        return Chat(chat_id, row["voice_mode"], row["style"], row["speaker"], lang)

    def known_chat(self, chat_id: str) -> bool:
        """Whether the chat ever sent or received anything."""
        row = self._db.execute("SELECT 1 FROM chats WHERE chat_id = ?", (chat_id,)).fetchone()
        return row is not None

    def touch_chat(self, chat_id: str) -> None:
        """Record that a chat exists."""
        self._db.execute(
            "INSERT INTO chats (chat_id, updated_at_ms) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (chat_id, now_ms()),
        )

    def update_chat(self, chat_id: str, **values: str | None) -> Chat:
        """Set voice_mode and/or style for a chat."""
        self.touch_chat(chat_id)
        for column, value in values.items():
            if column not in ("voice_mode", "style", "speaker", "lang"):
                raise ValueError(f"not a chat setting: {column}")
            self._db.execute(
                f"UPDATE chats SET {column} = ?, updated_at_ms = ? WHERE chat_id = ?",
                (value, now_ms(), chat_id),
            )
        return self.chat(chat_id)

    # -- jobs --------------------------------------------------------------------------------

    def add_job(
        self, chat_id: str, kind: str, text: str, style: str | None, speaker: str | None = None
    ) -> tuple[str, list[str]]:
        """Journal a queued job; for an automatic reply, make it the chat's latest and
        supersede the chat's queued older ones. Returns (job id, superseded ids)."""
        job_id = uuid.uuid4().hex[:16]
        stamp = now_ms()
        superseded: list[str] = []
        with self._tx() as db:
            db.execute(
                "INSERT INTO chats (chat_id, updated_at_ms) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (chat_id, stamp),
            )
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
        return job_id, superseded

    def job(self, job_id: str) -> Job | None:
        """A job by id."""
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def open_jobs(self) -> list[Job]:
        """Jobs left queued or running (by a crash), oldest first."""
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY n"
        ).fetchall()
        return [_job(r) for r in rows]

    def is_latest(self, job: Job) -> bool:
        """Whether an automatic reply is still its chat's latest (tts jobs always are)."""
        if job.kind != "auto":
            return True
        row = self._db.execute(
            "SELECT latest_auto_job FROM chats WHERE chat_id = ?", (job.chat_id,)
        ).fetchone()
        return row is not None and row["latest_auto_job"] == job.id

    def set_state(self, job_id: str, state: str, error: str | None = None) -> None:
        """Move a job to running, queued, superseded or failed (without delivery)."""
        self._db.execute(
            "UPDATE jobs SET state = ?, error = COALESCE(?, error), updated_at_ms = ? WHERE id = ?",
            (state, error, now_ms(), job_id),
        )

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
        with self._tx() as db:
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
                self._append(db, job.chat_id, "audio", audio_name=audio_name, job_id=job.id)
        return latest

    def fail(self, job: Job, error: str, notice: str) -> bool:
        """Fail a job and tell its chat, unless it was a stale automatic reply (then it is
        superseded quietly). Returns whether the chat was told."""
        with self._tx() as db:
            latest = self.is_latest(job)
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at_ms = ? WHERE id = ?",
                ("failed" if latest else "superseded", error, now_ms(), job.id),
            )
            if latest:
                self._append(db, job.chat_id, "text", text=notice, job_id=job.id)
        return latest

    # -- outbox ------------------------------------------------------------------------------

    def add_text(self, chat_id: str, text: str) -> int:
        """Append a text message to a chat's outbox; returns its sequence number."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO chats (chat_id, updated_at_ms) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (chat_id, now_ms()),
            )
            return self._append(db, chat_id, "text", text=text)

    @staticmethod
    def _append(
        db: sqlite3.Connection,
        chat_id: str,
        kind: str,
        *,
        text: str | None = None,
        audio_name: str | None = None,
        job_id: str | None = None,
    ) -> int:
        seq = db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox WHERE chat_id = ?", (chat_id,)
        ).fetchone()[0]
        db.execute(
            "INSERT INTO outbox (chat_id, seq, kind, text, audio_name, job_id, created_at_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (chat_id, seq, kind, text, audio_name, job_id, now_ms()),
        )
        return int(seq)

    def outbox(self, chat_id: str, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        """A chat's outbox items after `after`, in order."""
        rows = self._db.execute(
            "SELECT * FROM outbox WHERE chat_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (chat_id, after, limit),
        ).fetchall()
        return [dict(r) for r in rows]

    def unsent(self, prefix: str, limit: int = 100) -> list[dict[str, Any]]:
        """Outbox items of a push channel's chats (ids starting with `prefix`) not yet
        acknowledged, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM outbox WHERE sent_at_ms IS NULL AND substr(chat_id, 1, ?) = ?"
            " ORDER BY created_at_ms, seq LIMIT ?",
            (len(prefix), prefix, limit),
        ).fetchall()
        return [dict(r) for r in rows]

    def mark_sent(self, chat_id: str, seq: int) -> None:
        """Record that a push channel delivered an outbox item."""
        self._db.execute(
            "UPDATE outbox SET sent_at_ms = ? WHERE chat_id = ? AND seq = ?",
            (now_ms(), chat_id, seq),
        )

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


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        chat_id=row["chat_id"],
        kind=row["kind"],
        state=row["state"],
        text=row["text"],
        style=row["style"],
        emotion=json.loads(row["emotion"]) if row["emotion"] else None,
        audio_name=row["audio_name"],
        audio_format=row["audio_format"],
        duration_s=row["duration_s"],
        error=row["error"],
        timings=json.loads(row["timings"]) if row["timings"] else None,
        created_at_ms=row["created_at_ms"],
        engine=row["engine"],
        fallback_from=row["fallback_from"],
        speaker=row["speaker"],
    )
