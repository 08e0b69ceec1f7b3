"""What the HTTP API answers, as JSON: a job, an outbox item, any answer (UTF-8 as it is, so a
reply in Chinese reads as Chinese in curl)."""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
from typing import Any

from aiohttp import web

from msgvoice.chat.port import Job, OutboxItem

_dumps = functools.partial(json.dumps, ensure_ascii=False)


def json_response(data: Any, status: int = 200) -> web.Response:
    """`data` as an `application/json` answer, characters unescaped."""
    return web.json_response(data, status=status, dumps=_dumps)


class BadRequest(Exception):
    """A client error: status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_json(request: web.Request, timeout_s: float) -> Any:
    """The request's JSON body, which must arrive in full within `timeout_s`: BadRequest 408
    for a body that stalls, 400 for one cut short or not JSON (413 comes from aiohttp)."""
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise BadRequest(408, f"the body did not arrive within {timeout_s:.0f}s") from None
    except ConnectionError:
        raise BadRequest(400, "the body was cut short") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "the body is not valid JSON") from None


def iso(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC (`2026-12-01T14:07:25.123Z`)."""
    stamp = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_json(job: Job, delivery: OutboxItem | None = None) -> dict[str, Any]:
    """A job as `GET /v1/jobs/{id}` shows it (with how its outbox item fared, if it has one)."""
    audio = None
    if job.audio_name and job.state == "done":
        audio = {
            "url": f"/v1/audio/{job.audio_name}",
            "format": job.audio_format,
            "duration_s": job.duration_s,
        }
    return {
        "id": job.id,
        "chat_id": job.chat_id,
        "kind": job.kind,
        "state": job.state,
        "text": job.text,
        "style": job.style,
        "emotion": job.emotion,
        "audio": audio,
        "error": job.error,
        "timings": job.timings,
        "engine": job.engine,
        "fallback_from": job.fallback_from,
        "delivery": {"state": delivery.state, "error": delivery.error} if delivery else None,
    }


def item_json(item: OutboxItem) -> dict[str, Any]:
    """An outbox item as `GET /v1/chats/{chat_id}/outbox` lists it."""
    shown: dict[str, Any] = {
        "seq": item.seq,
        "kind": item.kind,
        "created_at": iso(item.created_at_ms),
    }
    if item.text is not None:
        shown["text"] = item.text
    if item.audio is not None:
        shown["audio_url"] = f"/v1/audio/{item.audio.name}"
    if item.job_id:
        shown["job_id"] = item.job_id
    shown["state"] = item.state
    if item.error:
        shown["error"] = item.error
    return shown
