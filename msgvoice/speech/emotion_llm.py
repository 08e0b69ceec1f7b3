"""Emotion vectors from a local LLM: LM Studio, or any OpenAI-compatible server.

One chat-completions call per job covers every segment, and any failure returns None so the
caller falls back to the lexicon: a job is never failed by its emotion. Built for LM Studio as
its docs describe it (Idle TTL and Auto-Evict, Structured Output, REST API):

- JIT loading: the first request loads the model, which takes far longer than a reply may
  wait. Every request carries a `ttl` (`llm_ttl_s`) so the model stays loaded; the daemon warms
  the model at start (a one-token request in the background) and again after an idle gap that
  long; and a call while the model is cold gets the longer `llm_first_call_timeout_s`.
- Structured output: the request carries a JSON schema for exactly N vectors of 8 numbers; a
  server that rejects `response_format` is remembered and asked without it from then on (the
  tolerant parser reads whatever comes back).
- Reasoning models: `<think>` blocks are removed; an answer cut off by `max_tokens`
  (`finish_reason: "length"`) is asked once more with a larger budget, inside the same bound.
- "No models loaded" (JIT off): loaded through LM Studio's REST API when `llm_autoload` is on,
  else said once in the log (and by doctor).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import httpx

from msgvoice.config import EmotionConfig
from msgvoice.net import base_url, bearer
from msgvoice.speech.emotion import NAMES, Vector
from msgvoice.speech.emotion_answer import parse_vectors, schema

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You score emotions for a text-to-speech engine. For each numbered segment, give 8 numbers "
    "from 0 to 1 in this order: " + ", ".join(NAMES) + ". A style hint, when given, is how the "
    "speaker wants to sound and weighs more than the words. Answer with JSON only: "
    '{"vectors": [[8 numbers], ...]} with one vector per segment.'
)
NO_MODEL_HINTS = ("no models loaded", "model is unloaded", "not loaded")
SCHEMA_HINTS = ("response_format", "json_schema", "structured")
BUDGET_GROWTH = 4


class _Transient(Exception):
    """Worth one more try: refused connection, 5xx, a model that was just loaded."""


class _CutOff(Exception):
    """The answer ran out of tokens before its JSON (a reasoning model thinking)."""


_FAILURES = (TimeoutError, httpx.HTTPError, ValueError, _Transient, _CutOff)
"""Whatever ends a call without vectors: the reply falls back to the lexicon."""


class Analyser:
    """The LLM emotion analyser over one shared httpx client."""

    def __init__(self, config: EmotionConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.base = base_url(config.llm_base_url)
        self.url = self.base + "/v1/chat/completions"
        self.structured = True
        """Whether this endpoint takes `response_format` (until it says it does not)."""
        self.warm_until = 0.0
        """Monotonic time until which the model is taken to be loaded."""
        self._cache: OrderedDict[tuple[str, str, tuple[str, ...]], list[Vector]] = OrderedDict()
        self._warming: asyncio.Task[None] | None = None
        self._said_no_model = False
        self.calls = {"ok": 0, "error": 0, "cached": 0}

    @property
    def warm(self) -> bool:
        """Whether the model answered within its idle TTL (so it is still loaded)."""
        return time.monotonic() < self.warm_until

    def _answered(self) -> None:
        self.warm_until = time.monotonic() + self.config.llm_ttl_s
        self._said_no_model = False

    def bound_s(self) -> float:
        """How long the next call may take: longer while the model may be loading."""
        return self.config.llm_timeout_s if self.warm else self.config.llm_first_call_timeout_s

    def start_warming(self) -> None:
        """Warm the model in the background (a one-token request), unless it is warm or
        already warming; never awaited by a reply."""
        if not self.warm and (self._warming is None or self._warming.done()):
            self._warming = asyncio.create_task(self._warm_up(), name="emotion-llm-warm-up")

    async def _warm_up(self) -> None:
        body = self._body([{"role": "user", "content": "hi"}], max_tokens=1)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.llm_first_call_timeout_s):
                await self._post(body)
        except _FAILURES as exc:
            log.info("emotion LLM warm-up did not finish: %s", str(exc) or type(exc).__name__)
            return
        log.info("emotion LLM warm in %.1fs", time.monotonic() - started)

    async def close(self) -> None:
        """Stop a warm-up still running."""
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)

    async def analyse(self, style: str | None, segments: Sequence[str]) -> list[Vector] | None:
        """One vector per segment, or None (logged) when the LLM cannot give them in time."""
        key = (self.config.llm_model, style or "", tuple(segments))
        if key in self._cache:
            self._cache.move_to_end(key)
            self.calls["cached"] += 1
            return self._cache[key]
        started, bound = time.monotonic(), self.bound_s()
        try:
            async with asyncio.timeout(bound):
                vectors = await self._with_retries(style, segments)
        except _FAILURES as exc:
            self.calls["error"] += 1
            log.warning(
                "emotion LLM failed after %.0f ms (bound %.0fs), falling back: %s",
                (time.monotonic() - started) * 1000,
                bound,
                str(exc) or type(exc).__name__,
            )
            self.start_warming()
            return None
        self.calls["ok"] += 1
        if self.config.cache_size:
            self._cache[key] = vectors
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return vectors

    async def _with_retries(self, style: str | None, segments: Sequence[str]) -> list[Vector]:
        budget = 80 * len(segments) + 64
        for attempt in range(self.config.llm_retries + 1):
            try:
                return await self._once(style, segments, budget)
            except _CutOff:
                budget *= BUDGET_GROWTH
                log.info("emotion LLM answer cut off; asking again with %d tokens", budget)
                return await self._once(style, segments, budget)
            except _Transient as exc:
                if attempt == self.config.llm_retries:
                    raise
                log.info("emotion LLM transient failure (%s), retrying", exc)
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _body(self, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        return {
            "model": self.config.llm_model,
            "temperature": 0,
            "max_tokens": max_tokens,
            "ttl": self.config.llm_ttl_s,
            "messages": messages,
        }

    async def _once(self, style: str | None, segments: Sequence[str], budget: int) -> list[Vector]:
        numbered = "\n".join(f"{i}. {s}" for i, s in enumerate(segments, 1))
        user = f"Style hint: {style or '(none)'}\nSegments:\n{numbered}"
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        body = self._body(messages, budget)
        if self.structured:
            body["response_format"] = schema(len(segments))
        choice = await self._post(body)
        if choice.get("finish_reason") == "length":
            raise _CutOff(f"answer cut off at {budget} tokens")
        content = (choice.get("message") or {}).get("content")
        return parse_vectors(str(content or ""), len(segments))

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion; its first choice. Errors classified (see the module doc)."""
        try:
            response = await self.client.post(
                self.url, json=body, headers=bearer(self.config.llm_api_key), timeout=None
            )
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise _Transient(f"cannot reach {self.url}: {exc}") from exc
        text = response.text
        if response.status_code >= 400:
            return await self._refused(response.status_code, text, body)
        try:
            choice = response.json()["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"not a chat completion: {text[:120]!r}") from exc
        self._answered()
        return dict(choice)

    async def _refused(self, status: int, text: str, body: dict[str, Any]) -> dict[str, Any]:
        lowered = text.lower()
        if "response_format" in body and status < 500 and any(h in lowered for h in SCHEMA_HINTS):
            self.structured = False
            log.info("%s does not take response_format; reading free-form answers", self.url)
            return await self._post({k: v for k, v in body.items() if k != "response_format"})
        if any(h in lowered for h in NO_MODEL_HINTS):
            if self.config.llm_autoload:
                await self._load_model()
                raise _Transient("the model was not loaded; loaded it")
            if not self._said_no_model:
                self._said_no_model = True
                log.warning(
                    "LM Studio has no model loaded and does not load one itself (JIT off): "
                    "load %r in LM Studio, or set emotion.llm_autoload",
                    self.config.llm_model,
                )
            raise ValueError(f"HTTP {status}: no model loaded")
        if status >= 500:
            raise _Transient(f"HTTP {status}: {text[:120]}")
        raise ValueError(f"HTTP {status}: {text[:120]}")

    async def _load_model(self) -> None:
        """LM Studio's REST API: POST /api/v1/models/load."""
        url = self.base + "/api/v1/models/load"
        log.info("loading %s through %s", self.config.llm_model, url)
        response = await self.client.post(
            url,
            json={"model": self.config.llm_model},
            headers=bearer(self.config.llm_api_key),
            timeout=None,
        )
        if response.status_code >= 400:
            raise ValueError(f"loading the model failed: HTTP {response.status_code}")
