"""Retention: voice notes and journal rows do not pile up for ever.

A voice note is removed only when no one still waits for it (its push channel delivered or
refused it, or it belongs to an HTTP chat) and its grace period for clients fetching
`/v1/audio/{name}` has passed; then when it is older than `audio_days`, or, oldest first, while
all voice notes together take more than `audio_max_mb`. Files made from it for a chat app
(`<id>.48k.ogg`, `<id>.24k.caf`, parts) go with it. Finished jobs and settled outbox items
older than `jobs_days` leave the journal, which gives the space back (incremental vacuum).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from msgvoice.chat.journal import Journal
from msgvoice.chat.schema import now_ms
from msgvoice.config import RetentionConfig

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


@dataclass
class Swept:
    """What one retention run removed."""

    files: int = 0
    bytes: int = 0
    rows: int = 0

    def add(self, files: int = 0, freed: int = 0, rows: int = 0) -> None:
        """Count more removals."""
        self.files, self.bytes, self.rows = self.files + files, self.bytes + freed, self.rows + rows


class Retention:
    """Keeps the state dir within its limits."""

    def __init__(
        self,
        config: RetentionConfig,
        journal: Journal,
        audio_dir: Path,
        push_prefixes: Collection[str],
    ) -> None:
        self.config, self.journal, self.audio_dir = config, journal, audio_dir
        self.push_prefixes = tuple(push_prefixes)
        self.total = Swept()

    def audio_mb(self) -> float:
        """What the voice notes (and their conversions) take on disk."""
        return sum(p.stat().st_size for p in self.audio_dir.glob("*") if p.is_file()) / 2**20

    def run(self) -> Swept:
        """One pass; logs what it removed."""
        now = now_ms()
        config, prefixes = self.config, self.push_prefixes
        spent = spent_audio(self.journal, prefixes, now - int(config.grace_s * 1000))
        aged = now - int(config.audio_days * DAY_MS) if config.audio_days else 0
        old = set(spent_audio(self.journal, prefixes, aged)) if aged else set()
        over = (self.audio_mb() - config.audio_max_mb) * 2**20 if config.audio_max_mb else 0.0
        swept = Swept()
        for name in spent:  # oldest first, so every old one comes before any younger one
            if name not in old and over <= 0:
                break
            freed = self._remove(name)
            swept.add(files=int(freed > 0), freed=freed)
            over -= freed
        if config.jobs_days:
            swept.rows = forget_before(self.journal, prefixes, now - int(config.jobs_days * DAY_MS))
        if swept.files or swept.rows:
            log.info(
                "retention removed %d voice notes (%.1f MB) and %d journal rows",
                swept.files,
                swept.bytes / 2**20,
                swept.rows,
            )
        self.total.add(files=swept.files, freed=swept.bytes, rows=swept.rows)
        return swept

    def _remove(self, name: str) -> int:
        """Remove a voice note and what was made from it; the bytes freed."""
        freed = 0
        for path in self.audio_dir.glob(f"{Path(name).stem}.*"):  # the note and its conversions
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            freed += size
        return freed


def spent_audio(journal: Journal, push_prefixes: Collection[str], before_ms: int) -> list[str]:
    """Voice notes (file names, oldest first) made before `before_ms` that no one still waits
    for: delivered or refused by their push channel, or in a chat no push channel serves (HTTP
    clients fetch them)."""
    settled, args = _settled(push_prefixes)
    rows = journal.db.execute(
        "SELECT audio_name FROM outbox WHERE audio_name IS NOT NULL AND created_at_ms < ?"
        f" AND {settled} ORDER BY created_at_ms",
        (before_ms, *args),
    ).fetchall()
    return [str(r["audio_name"]) for r in rows]


def forget_before(journal: Journal, push_prefixes: Collection[str], before_ms: int) -> int:
    """Remove finished jobs, settled outbox items and conversation turns older than
    `before_ms`; give the space
    back to the file system. Returns the rows removed."""
    settled, args = _settled(push_prefixes)
    with journal.transaction() as db:
        jobs = db.execute(
            "DELETE FROM jobs WHERE state IN ('done', 'failed', 'superseded')"
            " AND updated_at_ms < ?",
            (before_ms,),
        ).rowcount
        items = db.execute(
            f"DELETE FROM outbox WHERE created_at_ms < ? AND {settled}", (before_ms, *args)
        ).rowcount
        turns = db.execute("DELETE FROM turns WHERE created_at_ms < ?", (before_ms,)).rowcount
    journal.db.execute("PRAGMA incremental_vacuum")
    return int(jobs) + int(items) + int(turns)


def _settled(push_prefixes: Collection[str]) -> tuple[str, list[object]]:
    """The SQL condition (and its arguments) of an outbox row no one still waits on: a push
    channel delivered or refused it, or its chat is served by no push channel."""
    pushed = " OR ".join("substr(chat_id, 1, ?) = ?" for _ in push_prefixes) or "0"
    args: list[object] = [x for p in push_prefixes for x in (len(p), p)]
    return f"(sent_at_ms IS NOT NULL OR failed_at_ms IS NOT NULL OR NOT ({pushed}))", args
