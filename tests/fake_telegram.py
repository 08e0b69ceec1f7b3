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
- Scripted failures per method (the next calls, or the n-th call): 429 "Too Many Requests:
  retry after 1" with `parameters.retry_after`, or a 502 HTML page from the proxy in front.
- A voice over VOICE_NOTE_FILE_SIZE (1 MB) is recorded as shown as a file, not a voice bubble.
- A group in `migrated` was upgraded to a supergroup: every send to it answers 400 "Bad
  Request: group chat was upgraded to a supergroup chat" with `parameters.migrate_to_chat_id`
  (the answer quoted in TwiN/gatus#179; python-telegram-bot raises ChatMigrated on it), and
  `migrate()` delivers the two service messages the Bot API sends: `migrate_to_chat_id` in the
  old group, `migrate_from_chat_id` in the new supergroup (TelegramBots/Telegram.Bot#171).
- sendMessage over MessageLimit.MAX_TEXT_LENGTH (4,096 UTF-16 code units) answers 400 "Bad
  Request: message is too long".
- sendVoice to a chat in `no_voice` (a Premium user whose privacy settings forbid voice
  messages) answers 400 "Bad Request: VOICE_MESSAGES_FORBIDDEN"; sendDocument (multipart,
  `document`) still goes through, unless the chat is in `no_files` (a group whose members may
  not send documents: 400 "Bad Request: not enough rights to send documents to the chat").
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
MAX_TEXT_LENGTH = 4096
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
    scripted: dict[str, dict[int, int]] = field(default_factory=dict)
    """method → {n: status}: the n-th call of the method (from 1) answers that status."""
    blocked: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    webhook_url: str = ""
    other_poller: bool = False
    revoked: bool = False
    migrated: dict[str, int] = field(default_factory=dict)
    """old group id → the supergroup it became."""
    no_voice: set[str] = field(default_factory=set)
    no_files: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    url: str = ""
    _new: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def push(self, **update: Any) -> None:
        """Queue an update (an update_id is assigned)."""
        self.updates.append({"update_id": 1000 + len(self.updates), **update})
        self._new.set()

    def text(
        self,
        chat_id: int,
        text: str | None,
        user_id: int = 7,
        thread: int | None = None,
        kind: str = "",
        **fields: Any,
    ) -> None:
        """A person's message (`fields` adds or replaces Message fields: caption, photo...)."""
        kind = kind or ("supergroup" if thread else "group" if chat_id < 0 else "private")
        message: dict[str, Any] = {
            "message_id": len(self.updates) + 1,
            "chat": {"id": chat_id, "type": kind},
            "from": {"id": user_id, "is_bot": False, "first_name": "U"},
            "date": int(time.time()),
            "text": text,
        }
        if thread is not None:
            message |= {"message_thread_id": thread, "is_topic_message": True}
        self.push(message={k: v for k, v in (message | fields).items() if v is not None})

    def service(self, chat_id: int, **fields: Any) -> None:
        """A service message (new_chat_members, pinned_message, forum_topic_created...)."""
        chat = {"id": chat_id, "type": "supergroup" if chat_id < -(10**12) else "group"}
        sender = {"id": 7, "is_bot": False, "first_name": "U"}
        self.push(message={"message_id": len(self.updates) + 1, "chat": chat, "from": sender,
                           "date": int(time.time()), **fields})  # fmt: skip

    def migrate(self, old: int, new: int) -> None:
        """Upgrade a group to a supergroup, with the two service messages the Bot API sends."""
        self.migrated[str(old)] = new
        self.service(new, migrate_from_chat_id=old)
        self.service(old, migrate_to_chat_id=new)

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
        nth = self.scripted.get(method, {}).get(self.calls.count(method))
        if pending or nth:
            status = pending.pop(0) if pending else nth
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
        refused = self._refusal(method, str(params.get("chat_id")), params)
        if refused is not None:
            return refused
        if method == "sendVoice":
            params["as_file"] = len(params.get("voice_bytes", b"")) > VOICE_NOTE_FILE_SIZE
        self.sent.append({"method": method, "at": time.monotonic(), **params})
        return web.json_response({"ok": True, "result": {"message_id": len(self.sent)}})

    def _refusal(self, method: str, chat: str, params: dict[str, Any]) -> web.Response | None:
        """The error a send gets, if any."""
        if chat in self.migrated:
            upgraded = "Bad Request: group chat was upgraded to a supergroup chat"
            return _error(400, upgraded, migrate_to_chat_id=self.migrated[chat])
        too_long = len(str(params.get("text", "")).encode("utf-16-le")) > 2 * MAX_TEXT_LENGTH
        refusals = [
            (chat in self.blocked, 403, "Forbidden: bot was blocked by the user"),
            (chat in self.missing, 400, "Bad Request: chat not found"),
            (method == "sendMessage" and too_long, 400, "Bad Request: message is too long"),
            (method == "sendVoice" and chat in self.no_voice, 400,
             "Bad Request: VOICE_MESSAGES_FORBIDDEN"),
            (method == "sendDocument" and chat in self.no_files, 400,
             "Bad Request: not enough rights to send documents to the chat"),
        ]  # fmt: skip
        return next((_error(code, why) for hit, code, why in refusals if hit), None)

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
    params: dict[str, Any] = {k: v for k, v in form.items() if k not in ("voice", "document")}
    for name in ("voice", "document"):
        upload = form.get(name)
        if upload is not None:
            params[f"{name}_bytes"] = upload.file.read()  # type: ignore[union-attr]  # a file
            params[f"{name}_name"] = upload.filename  # type: ignore[union-attr]  # a file
    return params
