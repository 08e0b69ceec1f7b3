"""An OpenAI-compatible chat-completions server on loopback that behaves like LM Studio, after
its docs: "Idle TTL and Auto-Evict" (JIT loading on the first request, default on; a `ttl` in
the request body), "Structured Output" (`response_format: {"type": "json_schema", ...}`), the
REST API (`GET /api/v0/models` with `state` loaded / not-loaded; `POST /api/v1/models/load`)
and its error for a request while no model is loaded and JIT is off (HTTP 404, `{"error":
{"message": "No models loaded. Please load a model in the developer page or use the 'lms load'
command.", "type": "invalid_request_error", "param": "model", "code": null}}`).

Knobs: `load_s` (the first request loads the model: it answers that much later), `jit`,
`loaded`, `schema` (False: a 400 for `response_format`, as servers without structured output
answer), `think` (answers start with a reasoning block), `needs_tokens` (a smaller `max_tokens`
cuts the answer off: `finish_reason: "length"`), and a script of replies per test (each may
take `delay_s` to generate).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

NO_MODEL = (
    "No models loaded. Please load a model in the developer page or use the 'lms load' command."
)


@dataclass
class Reply:
    """One scripted answer: a chat completion with `content`, or a raw status and body, or a
    hang (never answers)."""

    content: str | None = None
    status: int = 200
    body: str | None = None
    hang: bool = False
    delay_s: float = 0.0
    """Generation time: the answer comes this much later."""


def vectors_json(*vectors: list[float]) -> str:
    return json.dumps({"vectors": [list(v) for v in vectors]})


@dataclass
class FakeLLM:
    script: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["emo-model"])
    load_s: float = 0.0
    jit: bool = True
    loaded: bool = True
    schema: bool = True
    think: bool = False
    needs_tokens: int = 0
    loads: list[str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _loading: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _ensure_loaded(self) -> web.Response | None:
        async with self._loading:
            if self.loaded:
                return None
            if not self.jit:
                error = {"message": NO_MODEL, "type": "invalid_request_error", "param": "model"}
                return web.json_response({"error": error | {"code": None}}, status=404)
            await asyncio.sleep(self.load_s)
            self.loaded = True
            return None

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        refused = await self._ensure_loaded()
        if refused is not None:
            return refused
        if "response_format" in body and not self.schema:
            message = "'response_format' of type 'json_schema' is not supported"
            return web.json_response({"error": {"message": message}}, status=400)
        if self.needs_tokens and int(body.get("max_tokens", 0)) < self.needs_tokens:
            return web.json_response(self._completion(body, "", cut_off=True))
        reply = self.script.pop(0) if self.script else Reply(vectors_json([0] * 7 + [0.5]))
        if reply.hang:
            await asyncio.sleep(3600)
        await asyncio.sleep(reply.delay_s)
        if reply.body is not None or reply.status != 200:
            return web.Response(
                status=reply.status, text=reply.body or "", content_type="application/json"
            )
        return web.json_response(self._completion(body, reply.content or ""))

    def _completion(
        self, body: dict[str, Any], content: str, cut_off: bool = False
    ) -> dict[str, Any]:
        finish = "stop"
        if self.think:
            content = "<think>The style says happy, so the first segment ...</think>\n" + content
        if cut_off:
            content, finish = "<think>Let me weigh each segment carefully, first", "length"
        choice = {
            "index": 0,
            "finish_reason": finish,
            "message": {"role": "assistant", "content": content},
        }
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [choice],
        }

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
        )

    async def _rest_models(self, _request: web.Request) -> web.Response:
        state = "loaded" if self.loaded else "not-loaded"
        data = [{"id": m, "object": "model", "type": "llm", "state": state} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _load(self, request: web.Request) -> web.Response:
        model = (await request.json()).get("model")
        self.loads.append(model)
        await asyncio.sleep(self.load_s)
        self.loaded = True
        return web.json_response({"model_instance_id": model, "load_time_seconds": self.load_s})

    async def __aenter__(self) -> FakeLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/api/v0/models", self._rest_models)
        app.router.add_post("/api/v1/models/load", self._load)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
