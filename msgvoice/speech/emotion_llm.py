"""Emotion vectors from a local LLM: LM Studio, llama.cpp, Ollama, any OpenAI-compatible server.

One chat-completions call per job covers every segment, and any failure returns None so the
caller falls back to the lexicon: a job is never failed by its emotion, and a server that does
not answer costs at most one reply its wait (`state` says where it stands):

- **Cold** (LM Studio's JIT loading, Ollama's first request, llama-server's "Loading model"):
  every request carries a `ttl` (`llm_ttl_s`) so the model stays loaded. The daemon warms the
  model in the background at start, and replies use the lexicon until it answers. After an
  idle gap longer than the ttl, the one next reply may wait `llm_first_call_timeout_s` while
  the model loads; replies meanwhile use the lexicon.
- **Down**: after OPEN_AFTER failures of the server in a row (or one cold call), replies do not
  ask it (the lexicon at once) while a background probe asks with back-off; its first answer
  brings the LLM back.
- **Structured output**: `json_schema`, else `json_object` with a `schema` (llama-cpp-python's
  dialect), else free-form with a small token budget, read tolerantly. A refusal is known by
  what it says (it names `response_format`), whatever its status; the form that works is
  remembered and said in one log line, and the better ones are tried again after REPROBE_S.
- **Reasoning models**: `<think>` blocks are removed; a structured answer cut off by
  `max_tokens` is asked once more with a larger budget, inside the same bound.
- **"No models loaded"** (LM Studio with JIT off): loaded through LM Studio's REST API when
  `llm_autoload` is on, else said once in the log (and by doctor).
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
from msgvoice.llm import (
    FORMS,
    Refused,
    ServerDown,
    complete,
    content_of,
    response_format,
)
from msgvoice.net import base_url, bearer
from msgvoice.speech.emotion import NAMES, Vector
from msgvoice.speech.emotion_answer import parse_vectors, schema
from msgvoice.speech.llm_health import SERVER_FAILURES, Liveness

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You score emotions for a text-to-speech engine. For each numbered segment, give 8 numbers "
    "from 0 to 1 in this order: " + ", ".join(NAMES) + ". A style hint, when given, is how the "
    "speaker wants to sound and weighs more than the words. Answer with JSON only: "
    '{"vectors": [[8 numbers], ...]} with one vector per segment.'
)
REPROBE_S = 600.0
"""How long a lesser structured-output form is kept before the better ones are tried again."""
BUDGET_GROWTH = 4
FORM_LINES = {
    "json_schema": "structured output as json_schema",
    "json_object": "structured output as json_object + schema",
    "text": "no structured output; reading free-form answers",
}


class _CutOff(Exception):
    """The answer ran out of tokens before its JSON (a reasoning model thinking)."""


_ANSWER_FAILURES = (ValueError, _CutOff, Refused)
"""The server answered, without vectors: this reply falls back, the server is up."""


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def budget(form: str, segments: int) -> int:
    """max_tokens for an answer: room to think for structured output, little for free-form
    (an answer that is not constrained to JSON is rarely worth many tokens)."""
    return 80 * segments + 64 if form != "text" else 40 * segments + 32


class Analyser:
    """The LLM emotion analyser over one shared httpx client."""

    def __init__(self, config: EmotionConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.base = base_url(config.llm_base_url)
        self.url = self.base + "/v1/chat/completions"
        self.form = 0
        """Index into FORMS of the structured-output form this endpoint takes."""
        self._form_at = 0.0
        self._form_said: str | None = None
        self.health = Liveness(
            f"emotion LLM at {self.base}",
            config.llm_ttl_s,
            config.llm_timeout_s,
            config.llm_first_call_timeout_s,
            self._ping,
        )
        self.last_failure: BaseException | None = None
        """Why the last reply fell back."""
        self._cache: OrderedDict[tuple[str, str, tuple[str, ...]], list[Vector]] = OrderedDict()
        self._said: set[str] = set()
        self.calls = {"ok": 0, "error": 0, "cached": 0, "skipped": 0}

    @property
    def last_error(self) -> str | None:
        """The last fall-back's reason, as logged."""
        return None if self.last_failure is None else _reason(self.last_failure)

    def facts(self) -> dict[str, Any]:
        """The analyser in /healthz and doctor."""
        down = self.health.down_s()
        return {
            "state": self.health.state,
            "url": self.base,
            "structured_output": FORMS[self.form],
            "failures_in_a_row": self.health.failures,
            "down_s": None if down is None else round(down, 1),
            "last_error": self.last_error,
            "calls": dict(self.calls),
        }

    def start_warming(self) -> None:
        """Warm the model in the background (a one-token request); never awaited by a reply."""
        self.health.start_warming()

    async def close(self) -> None:
        """Stop a warm-up or probe still running."""
        await self.health.close()

    async def _ping(self) -> None:
        await self._post(self._body([{"role": "user", "content": "hi"}], max_tokens=1))

    # -- one reply ---------------------------------------------------------------------------

    async def analyse(self, style: str | None, segments: Sequence[str]) -> list[Vector] | None:
        """One vector per segment, or None (logged) when the LLM cannot give them in time."""
        key = (self.config.llm_model, style or "", tuple(segments))
        if key in self._cache:
            self._cache.move_to_end(key)
            self.calls["cached"] += 1
            return self._cache[key]
        bound = self.health.bound_s()
        if bound is None:
            self.calls["skipped"] += 1
            return None
        started = time.monotonic()
        try:
            with self.health.call():
                async with asyncio.timeout(bound):
                    vectors = await self._with_retries(style, segments)
        except (*SERVER_FAILURES, *_ANSWER_FAILURES) as exc:
            self._fell_back(exc, started, bound)
            return None
        self.calls["ok"] += 1
        if self.config.cache_size:
            self._cache[key] = vectors
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return vectors

    def _fell_back(self, exc: BaseException, started: float, bound: float) -> None:
        self.calls["error"] += 1
        self.last_failure, why = exc, _reason(exc)
        # A refusal repeats on every message: said once at warning level, then quietly.
        level = logging.INFO if isinstance(exc, Refused) and why in self._said else logging.WARNING
        self._said.add(why)
        log.log(
            level,
            "emotion LLM failed after %.0f ms (bound %.0fs), falling back: %s",
            (time.monotonic() - started) * 1000,
            bound,
            why,
        )

    async def _with_retries(self, style: str | None, segments: Sequence[str]) -> list[Vector]:
        grown = 0
        for attempt in range(self.config.llm_retries + 1):
            try:
                return await self._once(style, segments, grown)
            except _CutOff:
                grown = budget("json_schema", len(segments)) * BUDGET_GROWTH
                log.info("emotion LLM answer cut off; asking again with %d tokens", grown)
                return await self._once(style, segments, grown)
            except ServerDown as exc:
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

    def _reprobe(self) -> None:
        """Ask in the best form again once a lesser one has served REPROBE_S (the server
        may have been upgraded or swapped)."""
        if self.form and time.monotonic() - self._form_at > REPROBE_S:
            self.form = 0

    async def _once(self, style: str | None, segments: Sequence[str], grown: int) -> list[Vector]:
        numbered = "\n".join(f"{i}. {s}" for i, s in enumerate(segments, 1))
        user = f"Style hint: {style or '(none)'}\nSegments:\n{numbered}"
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        self._reprobe()
        while True:
            form = FORMS[self.form]
            body = self._body(messages, grown or budget(form, len(segments)))
            asked = response_format(form, "emotion_vectors", schema(len(segments)))
            if asked is not None:
                body["response_format"] = asked
            try:
                choice = await self._post(body)
                break
            except Refused as exc:
                if exc.about != "format" or self.form == len(FORMS) - 1:
                    raise
                self.form, self._form_at = self.form + 1, time.monotonic()
                log.info("%s refuses response_format %s (%s)", self.url, form, exc)
        if self._form_said != form:
            self._form_said = form
            log.info("emotion LLM at %s: %s", self.base, FORM_LINES[form])
        if choice.get("finish_reason") == "length":
            if form == "text":
                raise ValueError(f"free-form answer cut off at {body['max_tokens']} tokens")
            raise _CutOff(f"answer cut off at {body['max_tokens']} tokens")
        return parse_vectors(content_of(choice), len(segments))

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion's first choice (see llm.complete); an answer of any
        kind marks the server up, and LM Studio's "no model loaded" is handled here."""
        try:
            choice = await complete(self.client, self.url, body, self.config.llm_api_key)
        except (Refused, ValueError) as exc:
            self.health.answered()
            unloaded = isinstance(exc, Refused) and exc.about == "unloaded"
            if unloaded and await self._no_model():
                return await complete(self.client, self.url, body, self.config.llm_api_key)
            raise
        self.health.answered()
        return choice

    async def _no_model(self) -> bool:
        """LM Studio with JIT off and nothing loaded: load it (llm_autoload; True when loaded),
        or say once what to do."""
        if self.config.llm_autoload:
            await self._load_model()
            return True
        if "no model" not in self._said:
            self._said.add("no model")
            log.warning(
                "LM Studio has no model loaded and does not load one itself (JIT off): "
                "load %r in LM Studio, or set emotion.llm_autoload",
                self.config.llm_model,
            )
        return False

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
