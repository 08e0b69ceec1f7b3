"""How the HTTP API reads what a client sends: a body field, an id, a number in the query. Each
bad one is a BadRequest (400, or 413 for too long) that names it."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from msgvoice.channels.views import BadRequest
from msgvoice.chat.port import ID_MAX, bad_id


def string_field(body: dict[str, Any], name: str, limit: int, required: bool = True) -> str:
    """A string field of at most `limit` characters; "" for an optional one left out."""
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BadRequest(400, f"field {name!r} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(400, f"field {name!r} is not valid Unicode") from None
    if required and not value.strip():
        raise BadRequest(400, f"field {name!r} is empty")
    if len(value) > limit:
        raise BadRequest(413, f"field {name!r} is {len(value)} characters; limit {limit}")
    return value


def checked_id(raw: str, name: str = "chat_id") -> str:
    """A chat or sender id, as every channel accepts them."""
    if (why := bad_id(raw)) is not None:
        raise BadRequest(400, f"{name} {why} (1-{ID_MAX} characters, no control characters)")
    return raw


def in_query(request: web.Request, name: str, hi: int | float, what: str) -> float:
    """`?name=` as a number from 0 to `hi` (an integer when `hi` is one); 0 when absent."""
    raw = request.query.get(name, "0")
    try:
        value: float = int(raw) if isinstance(hi, int) else float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= hi:  # NaN fails too
        raise BadRequest(400, f"{name} must be {what} from 0 to {int(hi)}, not {raw[:24]!r}")
    return value
