"""A small OpenAI-compatible chat-completions server on loopback, scripted per test."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    """One scripted answer: a chat completion with `content`, or a raw status and body, or a
    hang (never answers)."""

    content: str | None = None
    status: int = 200
    body: str | None = None
    hang: bool = False


def vectors_json(*vectors: list[float]) -> str:
    return json.dumps({"vectors": [list(v) for v in vectors]})


@dataclass
class FakeLLM:
    script: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["emo-model"])
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _chat(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        reply = self.script.pop(0) if self.script else Reply(vectors_json([0] * 7 + [0.5]))
        if reply.hang:
            await asyncio.sleep(3600)
        if reply.body is not None or reply.status != 200:
            return web.Response(
                status=reply.status, text=reply.body or "", content_type="application/json"
            )
        completion = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": self.requests[-1].get("model"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": reply.content},
                }
            ],
        }
        return web.json_response(completion)

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
        )

    async def __aenter__(self) -> FakeLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
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
