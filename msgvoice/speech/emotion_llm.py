"""Emotion vectors from a local LLM (LM Studio or any OpenAI-compatible server).

One chat-completions call per job covers every segment. The whole exchange, retries included,
is bounded by `llm_timeout_s`; any failure returns None so the caller falls back, and a job is
never failed by its emotion.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import httpx

from msgvoice.config import EmotionConfig
from msgvoice.net import base_url, bearer
from msgvoice.speech.emotion import NAMES, Vector, safe

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You score emotions for a text-to-speech engine. For each numbered segment, give 8 numbers "
    "from 0 to 1 in this order: " + ", ".join(NAMES) + ". A style hint, when given, is how the "
    "speaker wants to sound and weighs more than the words. Answer with JSON only: "
    '{"vectors": [[8 numbers], ...]} with one vector per segment.'
)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_TRANSIENT_HINTS = ("not loaded", "no models loaded", "loading", "unloaded")


class _Transient(Exception):
    """Worth one more try: refused connection, 5xx, model not loaded."""


def _number(x: Any) -> float:
    if isinstance(x, bool):
        raise ValueError("a boolean is not an emotion value")
    return float(x)


def _as_vector(item: Any) -> Vector:
    if isinstance(item, dict):
        item = item.get("vector", [item.get(n, 0) for n in NAMES])
    if not isinstance(item, list) or len(item) != len(NAMES):
        raise ValueError(f"expected {len(NAMES)} numbers, got {item!r:.80}")
    return safe([_number(x) for x in item])


def parse_vectors(content: str, count: int) -> list[Vector]:
    """Vectors from a model's answer: code fences, prose around the JSON, `vector`/`vectors`
    keys, numbers as strings; too few vectors are padded with the last, too many cut."""
    fenced = _FENCE.search(content)
    candidates = [fenced.group(1)] if fenced else []
    candidates += [content[i:] for i, ch in enumerate(content) if ch in "[{"]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        try:
            data, _ = decoder.raw_decode(candidate.strip())
        except ValueError:
            continue
        try:
            vectors = _vectors_of(data)
        except (ValueError, TypeError):
            continue
        if vectors:
            return (vectors + [vectors[-1]] * count)[:count]
    raise ValueError(f"no emotion vectors in the answer: {content[:120]!r}")


def _vectors_of(data: Any) -> list[Vector]:
    if isinstance(data, dict):
        if "vectors" in data:
            return [_as_vector(v) for v in data["vectors"]]
        return [_as_vector(data.get("vector", data))]
    if isinstance(data, list) and data and all(isinstance(v, list | dict) for v in data):
        return [_as_vector(v) for v in data]
    return [_as_vector(data)]


class Analyser:
    """The LLM emotion analyser over one shared httpx client."""

    def __init__(self, config: EmotionConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.url = base_url(config.llm_base_url) + "/v1/chat/completions"
        self._cache: OrderedDict[tuple[str, str, tuple[str, ...]], list[Vector]] = OrderedDict()
        self.calls = {"ok": 0, "error": 0, "cached": 0}

    def _request(self, style: str | None, segments: Sequence[str]) -> dict[str, Any]:
        numbered = "\n".join(f"{i}. {s}" for i, s in enumerate(segments, 1))
        user = f"Style hint: {style or '(none)'}\nSegments:\n{numbered}"
        return {
            "model": self.config.llm_model,
            "temperature": 0,
            "max_tokens": 80 * len(segments) + 64,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user},
            ],
        }

    async def analyse(self, style: str | None, segments: Sequence[str]) -> list[Vector] | None:
        """One vector per segment, or None (logged) when the LLM cannot give them in time."""
        key = (self.config.llm_model, style or "", tuple(segments))
        if key in self._cache:
            self._cache.move_to_end(key)
            self.calls["cached"] += 1
            return self._cache[key]
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.llm_timeout_s):
                vectors = await self._with_retries(style, segments)
        except (TimeoutError, httpx.HTTPError, ValueError, _Transient) as exc:
            self.calls["error"] += 1
            log.warning(
                "emotion LLM failed after %.0f ms, falling back: %s",
                (time.monotonic() - started) * 1000,
                str(exc) or type(exc).__name__,
            )
            return None
        self.calls["ok"] += 1
        if self.config.cache_size:
            self._cache[key] = vectors
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return vectors

    async def _with_retries(self, style: str | None, segments: Sequence[str]) -> list[Vector]:
        for attempt in range(self.config.llm_retries + 1):
            try:
                return await self._once(style, segments)
            except _Transient as exc:
                if attempt == self.config.llm_retries:
                    raise
                log.info("emotion LLM transient failure (%s), retrying", exc)
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _once(self, style: str | None, segments: Sequence[str]) -> list[Vector]:
        headers = bearer(self.config.llm_api_key)
        try:
            response = await self.client.post(
                self.url,
                json=self._request(style, segments),
                headers=headers,
                timeout=self.config.llm_timeout_s,
            )
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise _Transient(f"cannot reach {self.url}: {exc}") from exc
        body = response.text
        if response.status_code >= 500 or (
            response.status_code >= 400 and any(h in body.lower() for h in _TRANSIENT_HINTS)
        ):
            raise _Transient(f"HTTP {response.status_code}: {body[:120]}")
        if response.status_code >= 400:
            raise ValueError(f"HTTP {response.status_code}: {body[:120]}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"not a chat completion: {body[:120]!r}") from exc
        return parse_vectors(str(content), len(segments))
