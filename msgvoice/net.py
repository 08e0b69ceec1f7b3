"""How msgvoice talks to other servers: base URLs, bearer headers, back-off between retries."""

from __future__ import annotations

import functools
import ssl
import time

BACKOFF_MAX_S = 60.0


@functools.cache
def tls() -> ssl.SSLContext:
    """The process's one verifying TLS context for its HTTP clients: loading the CA bundle costs
    ~30 ms of CPU, which a daemon restarted in-process, or doctor asked in a daemon, need not
    pay again."""
    import httpx  # noqa: PLC0415 (its CA bundle and defaults; not every user of net needs it)

    return httpx.create_ssl_context()


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


class Backoff:
    """Failures in a row and when the next attempt may be made: `first_s` after the first,
    doubling up to `max_s`; a success starts over."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.failures = 0
        self.delay_s = 0.0
        self.next_at = 0.0

    def failed(self) -> float:
        """Count a failure; the wait before the next attempt."""
        self.failures += 1
        self.delay_s = next_backoff(self.delay_s, self.first_s, self.max_s)
        self.next_at = time.monotonic() + self.delay_s
        return self.delay_s

    def succeeded(self) -> None:
        """Start over (the next failure waits `first_s` again)."""
        self.failures, self.delay_s = 0, 0.0

    def wait_s(self) -> float:
        """How long until the next attempt may be made (≤ 0: now)."""
        return self.next_at - time.monotonic()
