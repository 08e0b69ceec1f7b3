"""A loopback Bot API server, after the Bot API's own text (core.telegram.org/bots/api) and
python-telegram-bot's constants and error mapping.

Answers are `{"ok": true, "result"}` or `{"ok": false, "error_code", "description",
"parameters"?}`, with the HTTP status equal to the error code, as the real server sends them:
- getMe: the bot (`username` msgvoice_bot); getUpdates: long polling from `offset`, only the
  update types in `allowed_updates`; sendMessage, sendVoice (multipart), sendChatAction
  (with `message_thread_id` for forum topics); deleteWebhook; getWebhookInfo.
- 401 "Unauthorized" for a token it does not know, and for every call once `revoked` (what
  the Bot API answers after @BotFather's /revoke).
- 403 "Forbidden: bot was blocked by the user" for a chat in `blocked`, 400 "Bad Request:
  chat not found" for one in `missing` (sends only).
- 409 "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to
  delete the webhook first" while `webhook_url` is set, and "Conflict: terminated by other
  getUpdates request; make sure that only one bot instance is running" while `other_poller`.
- Scripted failures per method: 429 "Too Many Requests: retry after 1" with
  `parameters.retry_after`, or a 502 HTML page from the proxy in front.
- A voice over VOICE_NOTE_FILE_SIZE (1 MB) is recorded as shown as a file, not a voice bubble.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123:TEST"
BOT_USERNAME = "msgvoice_bot"
VOICE_NOTE_FILE_SIZE = 1_000_000
WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
POLLER_CONFLICT = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance "
    "is running"
)


def _error(code: int, description: str, **parameters: Any) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)


@dataclass
class FakeTelegram:
    updates: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    failures: dict[str, list[int]] = field(default_factory=dict)
    """method → statuses to answer with first (429 or 502), one per call."""
    failed_at: dict[str, list[float]] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    webhook_url: str = ""
    other_poller: bool = False
    revoked: bool = False
    calls: list[str] = field(default_factory=list)
    url: str = ""
    _new: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def push(self, **update: Any) -> None:
        """Queue an update (an update_id is assigned)."""
        self.updates.append({"update_id": 1000 + len(self.updates), **update})
        self._new.set()

    def text(self, chat_id: int, text: str, user_id: int = 7, thread: int | None = None) -> None:
        message: dict[str, Any] = {
            "message_id": len(self.updates) + 1,
            "chat": {"id": chat_id, "type": "supergroup" if thread else "private"},
            "from": {"id": user_id, "is_bot": False, "first_name": "U"},
            "date": int(time.time()),
            "text": text,
        }
        if thread is not None:
            message |= {"message_thread_id": thread, "is_topic_message": True}
        self.push(message=message)

    def sent_by(self, method: str) -> list[dict[str, Any]]:
        return [s for s in self.sent if s["method"] == method]

    def voices_to(self, chat: int) -> int:
        """How many voice notes went to `chat`."""
        return sum(1 for v in self.sent_by("sendVoice") if v["chat_id"] == str(chat))

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN or self.revoked:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        self.calls.append(method)
        pending = self.failures.get(method) or []
        if pending:
            status = pending.pop(0)
            self.failed_at.setdefault(method, []).append(time.monotonic())
            if status == 429:
                return _error(429, "Too Many Requests: retry after 1", retry_after=1)
            return web.Response(status=502, text="<html>Bad Gateway</html>")
        params = await _params(request)
        return await self._method(method, params)

    async def _method(self, method: str, params: dict[str, Any]) -> web.Response:
        if method == "getUpdates":
            if self.webhook_url or self.other_poller:
                return _error(409, WEBHOOK_CONFLICT if self.webhook_url else POLLER_CONFLICT)
            return web.json_response({"ok": True, "result": await self._updates(params)})
        if method in ("getMe", "getWebhookInfo", "deleteWebhook"):
            return web.json_response({"ok": True, "result": self._about(method)})
        chat = str(params.get("chat_id"))
        if chat in self.blocked or chat in self.missing:
            blocked = chat in self.blocked
            return _error(
                403 if blocked else 400,
                "Forbidden: bot was blocked by the user"
                if blocked
                else "Bad Request: chat not found",
            )
        if method == "sendVoice":
            params["as_file"] = len(params.get("voice_bytes", b"")) > VOICE_NOTE_FILE_SIZE
        self.sent.append({"method": method, "at": time.monotonic(), **params})
        return web.json_response({"ok": True, "result": {"message_id": len(self.sent)}})

    def _about(self, method: str) -> Any:
        if method == "getMe":
            return {"id": 4242, "is_bot": True, "first_name": "msgvoice", "username": BOT_USERNAME}
        if method == "getWebhookInfo":
            return {
                "url": self.webhook_url,
                "has_custom_certificate": False,
                "pending_update_count": 0,
            }
        self.webhook_url = ""  # deleteWebhook
        return True

    async def _updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset", 0))
        allowed = params.get("allowed_updates") or ["message", "edited_message", "channel_post"]
        self.offsets.append(offset)

        def waiting() -> list[dict[str, Any]]:
            fresh = [u for u in self.updates if u["update_id"] >= offset]
            return [u for u in fresh if any(kind in u for kind in allowed)]

        if not waiting():
            self._new.clear()
            try:
                async with asyncio.timeout(min(float(params.get("timeout", 0)), 0.5)):
                    await self._new.wait()
            except TimeoutError:
                return []
        return waiting()

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application(client_max_size=60 * 2**20)
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


async def _params(request: web.Request) -> dict[str, Any]:
    if request.content_type != "multipart/form-data":
        return dict(await request.json()) if request.can_read_body else {}
    form = await request.post()
    params: dict[str, Any] = {k: v for k, v in form.items() if k != "voice"}
    voice = form.get("voice")
    if voice is not None:
        params["voice_bytes"] = voice.file.read()  # type: ignore[union-attr]  # a file field
        params["voice_name"] = voice.filename  # type: ignore[union-attr]  # a file field
    return params
