"""A loopback Feishu open platform: the REST API the bot uses and the long connection events
come through, after Feishu's open-platform docs (open.feishu.cn/document: "自建应用获取
tenant_access_token", "获取机器人信息", "上传文件", "发送消息", "接收消息 im.message.receive_v1",
"使用长连接接收事件", the IM error-code tables) and lark-oapi 1.7.5's long-connection client
(`lark_oapi/ws/client.py`, `const.py`, `pb/pbbp2.proto`), whose expectations a real server meets.

REST, every answer `{"code", "msg", ...}`:
- POST /open-apis/auth/v3/tenant_access_token/internal {app_id, app_secret}: a token good for
  `expire` seconds (a wrong secret: HTTP 400, code 10014 "app secret invalid"). A request
  with a token that is unknown, expired or `revoke()`d: HTTP 400, code 99991663 "Invalid
  access token for authorization".
- GET /open-apis/bot/v3/info: `bot` {app_name, open_id, activate_status}.
- POST /open-apis/im/v1/files, multipart file_type, file_name, duration, file: `file_key`
  (file_type must be one the docs list; duration a whole number of ms for opus).
- POST /open-apis/im/v1/messages?receive_id_type=chat_id {receive_id, msg_type, content (a
  JSON string), uuid}: a chat in `outside` → HTTP 400 code 230002 "The bot can not be outside
  the group."; `limit(n)` makes the next n answer HTTP 400 code 99991400 "request trigger
  frequency limit" with x-ogw-ratelimit-reset 1; a uuid seen before returns that message and
  posts none; audio needs a file_key this server issued.

Long connection: POST /callback/ws/endpoint {AppID, AppSecret} → data {URL (with device_id and
service_id), ClientConfig {PingInterval, ...}} (wrong credentials: a code lark-oapi treats as
the client's fault). The WebSocket carries binary pbbp2.Frames: a ping (method 0, type "ping")
is answered by a pong carrying the ClientConfig as JSON; an event goes as a data frame
(method 1, headers type "event", message_id, sum, seq, trace_id), in two parts when `split`;
one not answered with its frame and {"code": 200} within `resend_after_s` is pushed again
(Feishu's retry of an event not acknowledged). `drop()` cuts the connection without a close
frame. Events are pushed to the connections open at the time. `garbled` answers a path with
a body that is not Feishu's (what a proxy in front of it may send).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid as uuids
from typing import Any

from aiohttp import WSMsgType, web

from msgvoice.channels.lark_api import Frame

APP_ID, APP_SECRET = "cli_fake_app", "fake-secret"
BOT_OPEN_ID = "ou_bot000"


class FakeFeishu:
    def __init__(
        self, expire: int = 7200, ping_s: int = 120, outside: tuple[str, ...] = ()
    ) -> None:
        self.expire, self.ping_s, self.outside = expire, ping_s, set(outside)
        self.tokens: dict[str, float] = {}
        self.token_requests = 0
        self.endpoint_requests = 0
        self.files: dict[str, dict[str, Any]] = {}
        self.messages: list[dict[str, Any]] = []
        self.answers: list[tuple[str, int, int]] = []
        """(path, HTTP status, code) of every API answer."""
        self.acked: set[str] = set()
        self.garbled: dict[str, tuple[int, str]] = {}
        """path → (status, raw body) it is answered with instead, as a proxy in front of the
        platform might (an HTML error page, JSON that is not an object)."""
        self.pings = 0
        self.resend_after_s = 3.0
        self._limited = 0
        self._uuids: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self.clients: list[web.WebSocketResponse] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeFeishu:
        app = web.Application(middlewares=[self._garbling])
        app.router.add_post("/open-apis/auth/v3/tenant_access_token/internal", self._token)
        app.router.add_get("/open-apis/bot/v3/info", self._bot)
        app.router.add_post("/open-apis/im/v1/files", self._file)
        app.router.add_post("/open-apis/im/v1/messages", self._message)
        app.router.add_post("/callback/ws/endpoint", self._endpoint)
        app.router.add_get("/ws", self._ws)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for ws in list(self.clients):
            with contextlib.suppress(Exception):
                await ws.close()
        assert self._runner is not None
        await self._runner.cleanup()

    # the world's side

    def say(
        self,
        chat: str,
        user: str,
        text: str,
        *,
        group: bool = False,
        at_bot: bool = False,
        split: bool = False,
        event_id: str | None = None,
    ) -> str:
        """`user` writes `text` in `chat` (a group when `group`; @-mentioning the bot first
        when `at_bot`); returns the event's id."""
        mentions = []
        if at_bot:
            text = f"@_user_1 {text}"
            mentions.append({"key": "@_user_1", "id": {"open_id": BOT_OPEN_ID}, "name": "bot"})
        event_id = event_id or uuids.uuid4().hex
        event = {
            "schema": "2.0",
            "header": {
                "event_id": event_id,
                "event_type": "im.message.receive_v1",
                "create_time": str(int(time.time() * 1000)),
                "token": "",
                "app_id": APP_ID,
                "tenant_key": "tenant",
            },
            "event": {
                "sender": {
                    "sender_id": {"open_id": user, "union_id": "on_" + user, "user_id": None},
                    "sender_type": "user",
                    "tenant_key": "tenant",
                },
                "message": {
                    "message_id": f"om_{next(self._ids)}",
                    "create_time": str(int(time.time() * 1000)),
                    "chat_id": chat,
                    "chat_type": "group" if group else "p2p",
                    "message_type": "text",
                    "content": json.dumps({"text": text}, ensure_ascii=False),
                    "mentions": mentions,
                },
            },
        }
        self.push(json.dumps(event, ensure_ascii=False).encode(), split)
        return event_id

    def push(self, payload: bytes, split: bool = False) -> None:
        message_id = uuids.uuid4().hex
        parts = [payload[: len(payload) // 2], payload[len(payload) // 2 :]] if split else [payload]
        for ws in list(self.clients):
            self._spawn(self._deliver(ws, message_id, parts))

    async def _deliver(
        self, ws: web.WebSocketResponse, message_id: str, parts: list[bytes]
    ) -> None:
        while message_id not in self.acked and not ws.closed:
            for seq, part in enumerate(parts):
                frame = Frame(SeqID=0, LogID=0, service=7, method=1, payload=part)
                for key, value in (
                    ("type", "event"),
                    ("message_id", message_id),
                    ("sum", str(len(parts))),
                    ("seq", str(seq)),
                    ("trace_id", uuids.uuid4().hex),
                ):
                    frame.headers.add(key=key, value=value)
                await ws.send_bytes(frame.SerializeToString())
            await asyncio.sleep(self.resend_after_s)

    def revoke(self) -> None:
        """Every token issued so far is no longer good (it expired)."""
        self.tokens.clear()

    def limit(self, n: int) -> None:
        self._limited += n

    async def drop(self) -> None:
        for ws in list(self.clients):
            transport = ws._req.transport if ws._req is not None else None  # type: ignore[attr-defined]
            if transport is not None:
                transport.abort()

    def sent(self, chat: str, msg_type: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages
            if m["receive_id"] == chat and (msg_type is None or m["msg_type"] == msg_type)
        ]

    def texts(self, chat: str) -> list[str]:
        return [json.loads(m["content"])["text"] for m in self.sent(chat, "text")]

    def voices(self, chat: str) -> list[dict[str, Any]]:
        """The uploaded files (data, duration, file_type) of a chat's audio messages."""
        return [self.files[json.loads(m["content"])["file_key"]] for m in self.sent(chat, "audio")]

    # the platform's side

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answer(
        self, request: web.Request, status: int, body: dict[str, Any], **headers: str
    ) -> web.Response:
        self.answers.append((request.path, status, int(body.get("code", 0))))
        return web.json_response(body, status=status, headers=headers)

    @web.middleware
    async def _garbling(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in self.garbled:
            status, body = self.garbled[request.path]
            return web.Response(status=status, text=body, content_type="application/json")
        response: web.StreamResponse = await handler(request)
        return response

    def _authorized(self, request: web.Request) -> bool:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return self.tokens.get(token, 0.0) > time.monotonic()

    def _unauthorized(self, request: web.Request) -> web.Response:
        msg = "Invalid access token for authorization. Please make a request with token attached."
        return self._answer(request, 400, {"code": 99991663, "msg": msg})

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.token_requests += 1
        if body.get("app_id") != APP_ID or body.get("app_secret") != APP_SECRET:
            return self._answer(request, 400, {"code": 10014, "msg": "app secret invalid"})
        token = f"t-{next(self._ids)}"
        self.tokens[token] = time.monotonic() + self.expire
        answer = {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": self.expire}
        return self._answer(request, 200, answer)

    async def _bot(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        bot = {"activate_status": 2, "app_name": "msgvoice-bot", "open_id": BOT_OPEN_ID}
        return self._answer(request, 200, {"code": 0, "msg": "ok", "bot": bot})

    async def _file(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        form = await request.post()
        upload = form.get("file")
        duration = str(form.get("duration", ""))
        if form.get("file_type") != "opus" or not hasattr(upload, "file") or not duration.isdigit():
            return self._answer(request, 400, {"code": 234001, "msg": "Invalid request param."})
        key = f"file_v3_{next(self._ids)}"
        data = upload.file.read()  # type: ignore[union-attr]
        self.files[key] = {"data": data, "duration": int(duration), "file_type": "opus"}
        return self._answer(request, 200, {"code": 0, "msg": "success", "data": {"file_key": key}})

    async def _message(self, request: web.Request) -> web.Response:  # noqa: PLR0911 (the docs' refusals)
        if not self._authorized(request):
            return self._unauthorized(request)
        if request.query.get("receive_id_type") != "chat_id":
            return self._answer(request, 400, {"code": 230001, "msg": "invalid receive_id_type"})
        body = await request.json()
        if self._limited:
            self._limited -= 1
            answer = {"code": 99991400, "msg": "request trigger frequency limit"}
            return self._answer(request, 400, answer, **{"x-ogw-ratelimit-reset": "1"})
        if body.get("receive_id") in self.outside:
            answer = {"code": 230002, "msg": "The bot can not be outside the group."}
            return self._answer(request, 400, answer)
        if body.get("uuid") in self._uuids:
            return self._answer(
                request, 200, {"code": 0, "msg": "success", "data": self._uuids[body["uuid"]]}
            )
        content = json.loads(body.get("content") or "{}")
        if body.get("msg_type") == "audio" and content.get("file_key") not in self.files:
            return self._answer(request, 400, {"code": 230001, "msg": "invalid file_key"})
        message = {**body, "message_id": f"om_sent_{next(self._ids)}"}
        self.messages.append(message)
        if body.get("uuid"):
            self._uuids[body["uuid"]] = message
        return self._answer(request, 200, {"code": 0, "msg": "success", "data": message})

    async def _endpoint(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.endpoint_requests += 1
        if body.get("AppID") != APP_ID or body.get("AppSecret") != APP_SECRET:
            return self._answer(request, 200, {"code": 10014, "msg": "app secret invalid"})
        url = (
            self.url.replace("http://", "ws://") + f"/ws?device_id=d{next(self._ids)}&service_id=7"
        )
        config = {
            "ReconnectCount": -1,
            "ReconnectInterval": 120,
            "ReconnectNonce": 30,
            "PingInterval": self.ping_s,
        }
        return self._answer(
            request, 200, {"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": config}}
        )

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.clients.append(ws)
        try:
            async for message in ws:
                if message.type is not WSMsgType.BINARY:
                    continue
                frame = Frame()
                frame.ParseFromString(message.data)
                head = {h.key: h.value for h in frame.headers}
                if frame.method == 0 and head.get("type") == "ping":
                    self.pings += 1
                    pong = Frame(SeqID=0, LogID=0, service=frame.service, method=0)
                    pong.headers.add(key="type", value="pong")
                    pong.payload = json.dumps({"PingInterval": self.ping_s}).encode()
                    await ws.send_bytes(pong.SerializeToString())
                elif frame.method == 1 and json.loads(frame.payload).get("code") == 200:
                    self.acked.add(head["message_id"])
        finally:
            self.clients.remove(ws)
        return ws
