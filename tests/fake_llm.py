"""OpenAI-compatible chat servers on loopback that behave like the four people run, each after
its own docs or source (`kind`):

- **LM Studio** (`"lmstudio"`, the default), after its docs: "Idle TTL and Auto-Evict" (JIT
  loading on the first request, default on; a `ttl` in the request body), "Structured Output"
  (`response_format: {"type": "json_schema", ...}`; any other type is a 400
  `{"error": "'response_format.type' must be 'json_schema' or 'text'"}`, as quoted in
  lmstudio-ai/lmstudio-bug-tracker#189 and LoadShine/tada#16), the REST API (`GET
  /api/v0/models` with `state` loaded / not-loaded; `POST /api/v1/models/load`) and its
  error while no model is loaded and JIT is off (HTTP 404, "No models loaded. ...").
- **llama.cpp's llama-server** (`"llama-server"`), after tools/server/README.md: `/health`
  and `/props`; `/v1/models` with `owned_by: "llamacpp"`; one model, whatever `model` names;
  `json_schema` and `json_object` (+ `schema`) both honoured; while the model loads
  (`loaded=False`, until the test sets it) every endpoint answers 503 `{"error": {"code": 503,
  "message": "Loading model", "type": "unavailable_error"}}`; a wrong key is a 401 "Invalid
  API Key" (`authentication_error`).
- **llama-cpp-python's server** (`"llama-cpp-python"`), after llama_cpp/server (app.py,
  errors.py, types.py, model.py at 3691546): `/v1/models` with `owned_by: "me"`; an unknown
  model name is served by the default model; `response_format` is a TypedDict of `type`
  "text" | "json_object" and an optional `schema`, so `json_schema` fails validation, and
  RouteErrorHandler turns that (like every exception) into a **500** whose message is the
  FastAPI validation error's text, naming `response_format`; a wrong key is FastAPI's 401
  `{"detail": "Invalid API key"}`; requests are served one at a time (its llama lock). It
  loads its model before it listens (a connection refused until then, as in
  test_connection_refused_falls_back_quickly), so `load_s` is not used.
- **Ollama** (`"ollama"`), after server/routes.go, openai/openai.go and middleware/openai.go:
  `/api/version`, `/api/tags`; `/v1/models` with `owned_by` the model's namespace
  ("library"); `json_schema` and `json_object` honoured; it loads the model at its first
  request (the request waits, like JIT); a model not pulled is a 404 `{"error": {"message":
  "model 'x' not found", "type": "not_found_error"}}`.

Every chat request is recorded as it arrives (`requests`). A one-token request (a warm-up) is
answered at once and takes no scripted reply. Faults no server at hand gives on demand:
`frozen` (accepts connections and never answers,
as a machine swapping a model in does; settable while running), a script of replies (each
may take `delay_s`, hang, or be a raw status and body), `think` (answers start with a
reasoning block), `needs_tokens` (a smaller `max_tokens` cuts the answer off:
`finish_reason: "length"`), and `schema=False` (LM Studio-like, but refusing any
`response_format`, as servers without structured output do).
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
LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
OWNERS = {"llama-server": "llamacpp", "llama-cpp-python": "me", "ollama": "library"}
SINGLE_MODEL = ("llama-server", "llama-cpp-python")


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


def answer(data: dict[str, Any]) -> Any:
    """A handler that answers `data` as JSON."""

    async def handler(_request: web.Request) -> web.Response:
        return web.json_response(data)

    return handler


def validation_error(kind: str) -> str:
    """FastAPI's RequestValidationError text for a `response_format.type` of `kind`, as
    llama-cpp-python's RouteErrorHandler passes it on (str(exc) of fastapi 0.165)."""
    detail = {
        "type": "literal_error",
        "loc": ("body", "response_format", "type"),
        "msg": "Input should be 'text' or 'json_object'",
        "input": kind,
        "ctx": {"expected": "'text' or 'json_object'"},
    }
    return f"1 validation error:\n  {detail}"


@dataclass
class FakeLLM:
    script: list[Reply] = field(default_factory=list)
    kind: str = "lmstudio"
    requests: list[dict[str, Any]] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["emo-model"])
    load_s: float = 0.0
    jit: bool = True
    loaded: bool = True
    schema: bool = True
    think: bool = False
    needs_tokens: int = 0
    api_key: str = ""
    loads: list[str] = field(default_factory=list)
    url: str = ""
    _frozen: bool = False
    _runner: web.AppRunner | None = None
    _loading: asyncio.Lock = field(default_factory=asyncio.Lock)
    _serial: asyncio.Lock = field(default_factory=asyncio.Lock)
    _thawed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def frozen(self) -> bool:
        return self._frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self._frozen = value
        if value:
            self._thawed.clear()
        else:
            self._thawed.set()

    def formats(self) -> list[str | None]:
        """The `response_format` type of each chat request, in order (None: not sent)."""
        return [(r.get("response_format") or {}).get("type") for r in self.requests]

    # -- what every request meets first ------------------------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v1/chat/completions":
            self.requests.append(await request.json())
        if self._frozen:
            await self._thawed.wait()
        if self.kind == "llama-server" and not self.loaded:
            return web.json_response(LOADING, status=503)
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._unauthorised()
        if self.kind == "llama-cpp-python":
            async with self._serial:
                return await handler(request)
        return await handler(request)

    def _unauthorised(self) -> web.Response:
        if self.kind == "llama-cpp-python":
            return web.json_response({"detail": "Invalid API key"}, status=401)
        error = {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}
        return web.json_response({"error": error}, status=401)

    async def _ensure_loaded(self, model: str) -> web.Response | None:
        if self.kind == "ollama" and model not in self.models:
            error = {"message": f"model '{model}' not found", "type": "not_found_error"}
            return web.json_response({"error": error}, status=404)
        if self.kind in SINGLE_MODEL:
            return None  # loaded before it listened (llama-cpp-python) or gated above
        async with self._loading:
            if self.loaded:
                return None
            if not self.jit:
                error = {"message": NO_MODEL, "type": "invalid_request_error", "param": "model"}
                return web.json_response({"error": error | {"code": None}}, status=404)
            await asyncio.sleep(self.load_s)
            self.loaded = True
            return None

    def _format_refused(self, asked: dict[str, Any] | None) -> web.Response | None:
        if asked is None:
            return None
        kind = asked.get("type")
        if self.kind == "llama-cpp-python" and kind not in ("text", "json_object"):
            error = {
                "message": validation_error(str(kind)),
                "type": "internal_server_error",
                "param": None,
                "code": None,
            }
            return web.json_response({"error": error}, status=500)
        if self.kind == "lmstudio" and not self.schema:
            message = "'response_format' of type 'json_schema' is not supported"
            return web.json_response({"error": {"message": message}}, status=400)
        if self.kind == "lmstudio" and kind not in ("json_schema", "text"):
            message = "'response_format.type' must be 'json_schema' or 'text'"
            return web.json_response({"error": message}, status=400)
        return None

    # -- the endpoints -----------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        refused = await self._ensure_loaded(str(body.get("model")))
        refused = refused or self._format_refused(body.get("response_format"))
        if refused is not None:
            return refused
        if body.get("max_tokens") == 1:
            return web.json_response(self._completion(body, "hi"))
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
        model = self.models[0] if self.kind in SINGLE_MODEL else body.get("model")
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [choice],
        }

    async def _models(self, _request: web.Request) -> web.Response:
        owner = OWNERS.get(self.kind, "organization_owner")
        data = [{"id": m, "object": "model", "owned_by": owner} for m in self.models]
        return web.json_response({"object": "list", "data": data})

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

    async def _props(self, _request: web.Request) -> web.Response:
        settings = {"n_ctx": 4096, "params": {"temperature": 0.8}}
        return web.json_response(
            {"default_generation_settings": settings, "total_slots": 1, "model_path": "m.gguf"}
        )

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        if self.kind == "lmstudio":
            app.router.add_get("/api/v0/models", self._rest_models)
            app.router.add_post("/api/v1/models/load", self._load)
        elif self.kind == "llama-server":
            app.router.add_get("/health", answer({"status": "ok"}))
            app.router.add_get("/props", self._props)
        elif self.kind == "ollama":
            app.router.add_get("/api/version", answer({"version": "0.12.0"}))
            tags = {"models": [{"name": m, "model": m} for m in self.models]}
            app.router.add_get("/api/tags", answer(tags))

    async def __aenter__(self) -> FakeLLM:
        self.frozen = self._frozen
        app = web.Application(middlewares=[self._gate])
        self._routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        self._thawed.set()  # a frozen request must not hold the shutdown
        await self._runner.cleanup()
