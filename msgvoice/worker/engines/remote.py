"""Speech from another server that speaks OpenAI's `/v1/audio/speech`: msgvoice on a GPU box,
Kokoro-FastAPI, or OpenAI itself. The chat daemon stays small; the model runs elsewhere.

Each request asks for `pcm` (24 kHz 16-bit mono) with `stream: true` and reads it as it comes.
Requests are spread over `base_url` (a list) in turn; a server that cannot be reached, times
out, answers 5xx or drops the stream mid-way is skipped for a growing while (5 s doubling to
`down_max_s`) and the next one is asked. When every server is down the engine says it is
unavailable, and the daemon's fallback engines (`tts.fallback = ["espeak"]`) speak instead. A
4xx is the request's fault (an unknown voice): it is refused, not retried elsewhere. To a
msgvoice server (`msgvoice = true`) the segment's emotion vector and seed are sent as they are;
to others, the emotion's speaking rate as `speed`. The API key is read from the environment
variable named by `api_key_env`, never from the worker's command line.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from msgvoice.worker.protocol import EngineUnavailable, Prosody

PCM_RATE = 24_000
FIRST_DOWN_S = 5.0


class RemoteEngine:
    """An OpenAI-compatible speech server (or several) as an engine."""

    name = "remote"

    def __init__(
        self,
        *,
        base_url: Sequence[str] = (),
        model: str = "tts-1",
        voice: str = "alloy",
        api_key_env: str = "MSGVOICE_REMOTE_KEY",
        msgvoice: bool = True,
        timeout_s: float = 60.0,
        down_max_s: float = 60.0,
    ) -> None:
        urls = [u.rstrip("/").removesuffix("/v1") for u in base_url if u.strip()]
        if not urls:
            raise EngineUnavailable("the remote engine needs remote.base_url (one URL or a list)")
        self.urls, self.model, self.voice, self.msgvoice = urls, model, voice, msgvoice
        self.down_max_s = down_max_s
        key = os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=5.0))
        self._turn = itertools.cycle(range(len(urls)))
        self._down_until = dict.fromkeys(urls, 0.0)
        self._down_for = dict.fromkeys(urls, 0.0)

    def synthesize(
        self,
        text: str,
        voice: str | None,
        prosody: Prosody,
        emotion: Sequence[float] | None,
        seed: int | None = None,
    ) -> tuple[Any, int]:
        """The text as spoken by the first healthy server, in turn."""
        body: dict[str, Any] = {
            "model": self.model,
            "input": text,
            "voice": voice or self.voice,
            "response_format": "pcm",
            "stream": True,
        }
        if self.msgvoice:
            body |= {"emotion": list(emotion) if emotion else None, "seed": seed}
        else:
            body["speed"] = round(min(4.0, max(0.25, prosody.rate)), 3)
        tried: list[str] = []
        for url in self._order():
            try:
                return self._ask(url, body), PCM_RATE
            except (httpx.TransportError, _ServerError) as exc:
                self._mark_down(url)
                tried.append(f"{url}: {type(exc).__name__}: {exc}")
        raise EngineUnavailable("every remote speech server is down: " + "; ".join(tried))

    def _order(self) -> list[str]:
        """This request's servers: healthy ones from the next in turn, then none (all down)."""
        start = next(self._turn)
        now = time.monotonic()
        turn = self.urls[start:] + self.urls[:start]
        return [u for u in turn if self._down_until[u] <= now]

    def _ask(self, url: str, body: dict[str, Any]) -> Any:
        with self.client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            if response.status_code >= 500:
                raise _ServerError(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                response.read()
                raise ValueError(f"{url} refused it: {response.text[:200]}")
            pcm = b"".join(response.iter_bytes())
        self._down_for[url] = 0.0
        return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").copy()

    def _mark_down(self, url: str) -> None:
        wait = min(max(FIRST_DOWN_S, self._down_for[url] * 2), self.down_max_s)
        self._down_for[url] = wait
        self._down_until[url] = time.monotonic() + wait

    def facts(self) -> dict[str, Any]:
        """The servers and their state; the voices of the first that answers."""
        now = time.monotonic()
        return {
            "servers": {u: "down" if self._down_until[u] > now else "up" for u in self.urls},
            "sample_rate": PCM_RATE,
            "voices": self._voices(),
            "exact_speed": [0.25, 4.0],  # the server's own `speed`
        }

    def _voices(self) -> list[str]:
        for url in self.urls:
            try:
                listed = self.client.get(f"{url}/v1/audio/voices", timeout=3.0).json()["voices"]
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
            return [str(v["id"] if isinstance(v, dict) else v) for v in listed]
        return [self.voice]


class _ServerError(Exception):
    """The server failed (5xx): another one may do."""
