"""How msgvoice talks to other servers: base URLs, bearer headers, back-off between retries."""

from __future__ import annotations

BACKOFF_MAX_S = 60.0


def base_url(raw: str) -> str:
    """`http://host:1234`, `http://host:1234/` and `http://host:1234/v1` all mean one server."""
    url = raw.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for a bearer token; none when the token is empty."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def next_backoff(previous_s: float, first_s: float = 1.0, max_s: float = BACKOFF_MAX_S) -> float:
    """The next wait after a failure: `first_s`, then doubling up to `max_s`."""
    return min(max(first_s, previous_s * 2), max_s)
