"""A loopback Bot API server: getUpdates long polling, sendMessage, sendVoice (multipart),
sendChatAction; failures can be scripted per method (429 with retry_after, 502)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123:TEST"


@dataclass
class FakeTelegram:
    updates: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    failures: dict[str, list[int]] = field(default_factory=dict)
    """method → statuses to answer with first (429 or 502), one per call."""
    failed_at: dict[str, list[float]] = field(default_factory=dict)
    url: str = ""
    _new: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def push(self, **update: Any) -> None:
        """Queue an update (an update_id is assigned)."""
        self.updates.append({"update_id": 1000 + len(self.updates), **update})
        self._new.set()

    def text(self, chat_id: int, text: str, user_id: int = 7) -> None:
        self.push(
            message={
                "message_id": len(self.updates) + 1,
                "chat": {"id": chat_id},
                "from": {"id": user_id},
                "date": int(time.time()),
                "text": text,
            }
        )

    def sent_by(self, method: str) -> list[dict[str, Any]]:
        return [s for s in self.sent if s["method"] == method]

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        method = request.match_info["method"]
        pending = self.failures.get(method) or []
        if pending:
            status = pending.pop(0)
            self.failed_at.setdefault(method, []).append(time.monotonic())
            if status == 429:
                return web.json_response(
                    {
                        "ok": False,
                        "error_code": 429,
                        "description": "Too Many Requests: retry after 1",
                        "parameters": {"retry_after": 1},
                    },
                    status=429,
                )
            return web.Response(status=502, text="<html>Bad Gateway</html>")
        if request.content_type == "multipart/form-data":
            form = await request.post()
            params: dict[str, Any] = {k: v for k, v in form.items() if k != "voice"}
            voice = form.get("voice")
            if voice is not None:
                params["voice_bytes"] = voice.file.read()  # type: ignore[union-attr]  # a file field
                params["voice_name"] = voice.filename  # type: ignore[union-attr]  # a file field
        else:
            params = await request.json()
        if method == "getUpdates":
            return web.json_response({"ok": True, "result": await self._updates(params)})
        self.sent.append({"method": method, "at": time.monotonic(), **params})
        return web.json_response({"ok": True, "result": {"message_id": len(self.sent)}})

    async def _updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset", 0))
        self.offsets.append(offset)
        waiting = [u for u in self.updates if u["update_id"] >= offset]
        if not waiting:
            self._new.clear()
            try:
                async with asyncio.timeout(min(float(params.get("timeout", 0)), 0.5)):
                    await self._new.wait()
            except TimeoutError:
                return []
            waiting = [u for u in self.updates if u["update_id"] >= offset]
        return waiting

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._api)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
