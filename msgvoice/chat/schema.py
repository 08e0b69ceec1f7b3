"""The journal's tables, how the database is opened, and how rows become records."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from msgvoice.chat.port import DeliveryState, Job, OutboxItem

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
    failed_at_ms INTEGER,
    error TEXT,
    PRIMARY KEY (chat_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_job_once ON outbox (job_id, kind) WHERE job_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS asks (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_chat ON turns (chat_id, n);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

INCREMENTAL = 2
"""sqlite's auto_vacuum = INCREMENTAL."""

MIGRATIONS = (
    ("jobs", "engine", "TEXT"),
    ("jobs", "fallback_from", "TEXT"),
    ("jobs", "speaker", "TEXT"),
    ("chats", "speaker", "TEXT"),
    ("chats", "lang", "TEXT"),
    ("outbox", "failed_at_ms", "INTEGER"),
    ("outbox", "error", "TEXT"),
)
"""Columns added after the first release: (table, column, type)."""


def now_ms() -> int:
    """Wall-clock milliseconds (for journal timestamps)."""
    return int(time.time() * 1000)


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the journal: WAL, NORMAL sync, incremental vacuum (so retention can
    give space back), the schema and its migrations."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:
        db.execute(f"PRAGMA auto_vacuum={INCREMENTAL}")
        db.execute("VACUUM")  # takes effect on an existing journal only after a vacuum
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(SCHEMA)
    for table, column, kind in MIGRATIONS:
        columns = {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}
        if column not in columns:  # a journal from before this column
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    return db


def _delivery(row: sqlite3.Row) -> DeliveryState:
    if row["sent_at_ms"] is not None:
        return "sent"
    return "failed" if row["failed_at_ms"] is not None else "pending"


def to_item(row: sqlite3.Row, audio_dir: Path) -> OutboxItem:
    """An outbox row (joined with its job's duration) as an item."""
    return OutboxItem(
        chat_id=row["chat_id"],
        seq=int(row["seq"]),
        kind=row["kind"],
        created_at_ms=int(row["created_at_ms"]),
        text=row["text"],
        audio=audio_dir / row["audio_name"] if row["audio_name"] else None,
        job_id=row["job_id"],
        duration_s=row["duration_s"],
        state=_delivery(row),
        error=row["error"],
    )


ITEMS = "SELECT o.*, j.duration_s FROM outbox AS o LEFT JOIN jobs AS j ON j.id = o.job_id"


def to_job(row: sqlite3.Row) -> Job:
    """A jobs row as a record."""
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


def ensure_chat(db: sqlite3.Connection, chat_id: str, stamp: int) -> None:
    """Give a chat its row, if it has none yet."""
    db.execute(
        "INSERT INTO chats (chat_id, updated_at_ms) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (chat_id, stamp),
    )


def append_item(
    db: sqlite3.Connection,
    chat_id: str,
    kind: str,
    *,
    text: str | None = None,
    audio_name: str | None = None,
    job_id: str | None = None,
) -> int:
    """Add an item at the end of a chat's outbox; its sequence number."""
    seq = db.execute(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox WHERE chat_id = ?", (chat_id,)
    ).fetchone()[0]
    db.execute(
        "INSERT INTO outbox (chat_id, seq, kind, text, audio_name, job_id, created_at_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (chat_id, seq, kind, text, audio_name, job_id, now_ms()),
    )
    return int(seq)
