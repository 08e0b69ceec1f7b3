"""An OpenAI-compatible chat server as msgvoice meets it (the emotion analyser and the
responder both): one completion, how a server says
no, which structured-output dialect it speaks, and which kind of server it is.

The kinds differ where it matters (doctor names them, and their fixes differ):

- LM Studio: `GET /api/v0/models` lists models with a `state` (its REST API); JIT loading
  makes the first request wait; with JIT off, "No models loaded" (404).
- Ollama: `GET /api/version` answers `{"version": ...}` (server/routes.go); it loads a model
  at its first request; a model not pulled is a 404 "model 'x' not found".
- llama.cpp's `llama-server`: `GET /props` answers its generation settings, `/v1/models` says
  `owned_by: llamacpp`; while the model loads every endpoint is a 503 "Loading model"
  (tools/server/README.md). One model, whatever `model` a request names.
- llama-cpp-python's `llama_cpp.server`: `/v1/models` says `owned_by: me`; an unknown model
  name is served by the default model (server/model.py). Its request model knows only
  `response_format` types `text` and `json_object` (+ `schema`), and every validation error
  comes back as a 500 naming the field (server/errors.py wraps all exceptions).
- vLLM: `/v1/models` says `owned_by: vllm`.

A refusal is recognised by what it says, not by its status alone: a 4xx, or any status whose
message names `response_format` (the request, not the server, is at fault).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from msgvoice.net import bearer

FORMS = ("json_schema", "json_object", "text")
"""Structured-output dialects, best first: OpenAI's `json_schema`; `json_object` with a
`schema` (llama-cpp-python, llama-server, Ollama); none (free-form, read tolerantly)."""
FORMAT_HINTS = ("response_format", "json_schema", "structured output")
NO_MODEL_HINTS = ("no models loaded", "model is unloaded", "not loaded")
LOADING_HINTS = ("loading model",)
SINGLE_MODEL = ("llama.cpp", "llama-cpp-python")
"""Kinds that serve their one model whatever `model` a request names."""
PROBE_TIMEOUT_S = 3.0
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S)


class ServerDown(Exception):
    """No answer from the server itself: unreachable, a 5xx, still loading its model."""


@dataclass
class Refused(Exception):
    """The server answered and said no to this request. `about`: "auth" (a 401/403: the API
    key), "model" (not there), "unloaded" (there, but no model is loaded: LM Studio with JIT
    off), "format" (`response_format`) or "request"."""

    status: int
    message: str
    about: str

    def __str__(self) -> str:
        return f"HTTP {self.status} ({self.about}): {self.message[:160]}"


def error_message(text: str) -> str:
    """The message of an error body in any of the shapes servers use: OpenAI's
    `{"error": {"message"}}`, `{"error": "..."}`, FastAPI's `{"detail": ...}`, or plain text."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data))
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)
    return str(data)


def failure(status: int, text: str) -> Exception:
    """What an error response means: Refused (the request) or ServerDown (the server)."""
    message = error_message(text)
    lowered = message.lower()
    if any(h in lowered for h in FORMAT_HINTS):
        return Refused(status, message, "format")
    if status in (401, 403):
        return Refused(status, message, "auth")
    if any(h in lowered for h in NO_MODEL_HINTS):
        return Refused(status, message, "unloaded")
    if status == 404 and "model" in lowered:
        return Refused(status, message, "model")
    if status >= 500 or status == 429 or any(h in lowered for h in LOADING_HINTS):
        return ServerDown(f"HTTP {status}: {message[:160]}")
    return Refused(status, message, "request")


def response_format(form: str, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The `response_format` asking for `schema` in one of FORMS (None for free-form)."""
    if form == "json_schema":
        named = {"name": name, "strict": True, "schema": schema}
        return {"type": "json_schema", "json_schema": named}
    if form == "json_object":
        return {"type": "json_object", "schema": schema}
    return None


async def complete(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], api_key: str
) -> dict[str, Any]:
    """One chat completion's first choice; raises ServerDown, Refused, or ValueError for an
    answer that is not a chat completion. Unbounded: the caller bounds it."""
    try:
        response = await client.post(url, json=body, headers=bearer(api_key), timeout=None)
    except httpx.HTTPError as exc:
        raise ServerDown(f"cannot reach {url}: {str(exc) or type(exc).__name__}") from exc
    if response.status_code >= 400:
        raise failure(response.status_code, response.text)
    try:
        choice = response.json()["choices"][0]
        return dict(choice)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"not a chat completion: {response.text[:120]!r}") from exc


def content_of(choice: dict[str, Any]) -> str:
    """A choice's message text ("" when there is none)."""
    return str((choice.get("message") or {}).get("content") or "")


def without_thinking(content: str) -> str:
    """The answer with reasoning blocks (`<think>...</think>`, even an unfinished one) removed."""
    return _THINK.sub("", content).strip()


@dataclass
class Identity:
    """What doctor learned of a server: its kind, the models it lists, or why it did not say."""

    kind: str = "other"
    models: list[str] = field(default_factory=list)
    error: Exception | None = None

    @property
    def single_model(self) -> bool:
        """Whether any `model` name is answered by the one model it serves."""
        return self.kind in SINGLE_MODEL


async def _get_json(client: httpx.AsyncClient, url: str, api_key: str) -> Any:
    response = await client.get(url, headers=bearer(api_key), timeout=PROBE_TIMEOUT_S)
    if response.status_code >= 400:
        raise failure(response.status_code, response.text)
    return response.json()


async def identify(client: httpx.AsyncClient, base: str, api_key: str) -> Identity:
    """The server's kind (by what its endpoints answer, see the module doc) and its models."""
    try:
        listed = await _get_json(client, base + "/v1/models", api_key)
        data = [m for m in listed.get("data", []) if isinstance(m, dict)]
    except (httpx.HTTPError, ValueError, AttributeError, Refused, ServerDown) as exc:
        return Identity(error=exc)
    models = [str(m.get("id")) for m in data]
    owners = {str(m.get("owned_by", "")).lower() for m in data}
    kind = "other"
    if "llamacpp" in owners:
        kind = "llama.cpp"
    elif "vllm" in owners:
        kind = "vLLM"
    elif "me" in owners:
        kind = "llama-cpp-python"
    probes: list[tuple[str, str, Callable[[Any], bool]]] = [
        ("/api/v0/models", "LM Studio", lambda d: any("state" in m for m in d["data"])),
        ("/api/version", "Ollama", lambda d: "version" in d),
        ("/props", "llama.cpp", lambda d: "default_generation_settings" in d),
    ]
    for path, named, test in probes:
        if kind != "other":
            break
        try:
            if test(await _get_json(client, base + path, api_key)):
                kind = named
        except (httpx.HTTPError, ValueError, LookupError, TypeError, Refused, ServerDown):
            continue
    return Identity(kind, models)
