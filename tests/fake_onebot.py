"""A loopback OneBot v11 implementation, as NapCat serves its forward WebSocket: the spec
(botuniverse/onebot-11: communication/ws.md, communication/authorization.md, api/public.md,
event/message.md, event/meta.md, message/array.md, message/string.md, message/segment.md) and
NapCat's source where the spec leaves it open (packages/napcat-onebot/network/
websocket-server.ts, action/OneBotAction.ts, action/msg/SendMsg.ts; packages/napcat-core/helper/
audio.ts).

- One WebSocket at `/` carries events and API calls. With a token set, the client must send it
  as `Authorization: Bearer <token>` or `?access_token=`; otherwise NapCat accepts the
  connection, sends `{"status": "failed", "retcode": 1403, "message": "token验证失败"}` and
  closes it (`authorize`).
- On connecting: a lifecycle meta event, `sub_type` "connect"; then a heartbeat meta event
  every `heartbeat_ms` (`interval` says it) while a client is connected (`startHeartbeat`).
  `hang()` stops them (and every answer) with the socket left open, as an implementation whose
  event loop is stuck; `drop()` cuts the TCP connection without a close frame.
- Events go to the connections open at that moment only (`onEvent`): one said while no client
  is connected is lost, as in NapCat.
- API calls `{"action", "params", "echo"}` are answered with `{"status", "retcode", "data",
  "message", "wording", "echo"}` (`OB11Response`): an unknown action 1404 "不支持的API …",
  bad parameters 1400, whatever fails inside 1200 with the error's message
  (`websocketHandle`). Actions: get_login_info, get_version_info, send_private_msg,
  send_group_msg, send_msg. `message` may be an array of segments, one segment, or a CQ
  string. A private message to someone QQ does not know fails "无法获取用户信息"
  (`createContext`); to a group the account is not in, "发送消息失败" (the kernel returns no
  message). A `record` segment's `file` is `base64://…`, `file://…` or a path; a file that is
  not SILK (`#!SILK` in its first bytes, `isSilk`) is converted with ffmpeg, which this fake
  has not got (`ffmpeg=False`, as NapCat on a platform without its bundled addon and no
  system ffmpeg): 1200 "语音转换失败".
- Message events carry `message` in the format chosen (`message_format`: "array" or
  "string", NapCat's `messagePostFormat`) and `raw_message` as CQ text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

BOT = 3_000_000_001
TOKEN = "onebot-token"


def cq_escape(text: str, comma: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("[", "&#91;").replace("]", "&#93;")
    return text.replace(",", "&#44;") if comma else text


def cq_string(segments: list[dict[str, Any]]) -> str:
    out = []
    for seg in segments:
        if seg["type"] == "text":
            out.append(cq_escape(seg["data"]["text"]))
        else:
            params = "".join(f",{k}={cq_escape(str(v), True)}" for k, v in seg["data"].items())
            out.append(f"[CQ:{seg['type']}{params}]")
    return "".join(out)


def parse_cq(message: str) -> list[dict[str, Any]]:
    """NapCat's decodeCQCode, for what this fake is sent."""
    out: list[dict[str, Any]] = []
    rest = message
    while rest:
        start = rest.find("[CQ:")
        if start != 0:
            text = rest if start < 0 else rest[:start]
            unescaped = text.replace("&#91;", "[").replace("&#93;", "]").replace("&amp;", "&")
            out.append({"type": "text", "data": {"text": unescaped}})
            rest = "" if start < 0 else rest[start:]
            continue
        end = rest.index("]")
        kind, *params = rest[4:end].split(",")
        out.append({"type": kind, "data": dict(p.split("=", 1) for p in params)})
        rest = rest[end + 1 :]
    return out


class OneBotFailure(Exception):
    def __init__(self, retcode: int, message: str) -> None:
        super().__init__(message)
        self.retcode = retcode


class FakeOneBot:
    """`sent` holds each message the bot sent: {"action", "target", "segments"}."""

    def __init__(
        self,
        token: str | None = TOKEN,
        message_format: str = "array",
        heartbeat_ms: int = 30_000,
        friends: tuple[int, ...] = (10001, 10002, 10003),
        groups: tuple[int, ...] = (20001, 20002),
    ) -> None:
        self.token, self.message_format, self.heartbeat_ms = token, message_format, heartbeat_ms
        self.friends, self.groups = set(friends), set(groups)
        self.sent: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.connections = 0
        self.refused = 0
        self.clients: list[web.WebSocketResponse] = []
        self.hung = False
        self.heartbeats = 0
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeOneBot:
        app = web.Application()
        app.router.add_get("/", self._ws)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"ws://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for ws in self.clients:
            with contextlib.suppress(Exception):
                await ws.close()
        assert self._runner is not None
        await self._runner.cleanup()

    # the world's side: people say things, the implementation misbehaves

    def say(self, user: int, text: str, group: int | None = None, at_bot: bool = False) -> int:
        """`user` sends `text` in a private chat, or in `group` (with the bot @-mentioned
        first when `at_bot`); returns the message id."""
        segments: list[dict[str, Any]] = []
        if at_bot:
            segments.append({"type": "at", "data": {"qq": str(BOT)}})
            segments.append({"type": "text", "data": {"text": " "}})
        segments.append({"type": "text", "data": {"text": text}})
        return self.say_segments(user, segments, group)

    def say_segments(self, user: int, segments: list[dict[str, Any]], group: int | None) -> int:
        message_id = next(self._ids)
        event: dict[str, Any] = {
            "time": int(time.time()),
            "self_id": BOT,
            "post_type": "message",
            "message_type": "group" if group else "private",
            "sub_type": "normal" if group else "friend",
            "message_id": message_id,
            "user_id": user,
            "message": segments if self.message_format == "array" else cq_string(segments),
            "message_format": self.message_format,
            "raw_message": cq_string(segments),
            "font": 14,
            "sender": {"user_id": user, "nickname": f"user{user}"},
        }
        if group:
            event["group_id"] = group
        self.push(event)
        return message_id

    def push(self, event: dict[str, Any]) -> None:
        """To every connection open now (NapCat's onEvent); lost when there is none."""
        for ws in list(self.clients):
            self._spawn(ws.send_str(json.dumps(event, ensure_ascii=False)))

    def push_raw(self, text: str) -> None:
        """Any text frame, as a buggy implementation or plugin might send."""
        for ws in list(self.clients):
            self._spawn(ws.send_str(text))

    def hang(self) -> None:
        self.hung = True

    async def drop(self) -> None:
        """Cut every connection without a close frame, as a network does."""
        for ws in list(self.clients):
            transport = ws._req.transport if ws._req is not None else None  # type: ignore[attr-defined]
            if transport is not None:
                transport.abort()

    def to(self, chat: str) -> list[dict[str, Any]]:
        """What the bot sent to `user:<n>` or `group:<n>`, in order."""
        return [m for m in self.sent if m["target"] == chat]

    def records(self, chat: str) -> list[bytes]:
        """The voice notes (their bytes) the bot sent to a chat."""
        out = []
        for message in self.to(chat):
            for seg in message["segments"]:
                if seg["type"] == "record":
                    out.append(base64.b64decode(seg["data"]["file"].removeprefix("base64://")))
        return out

    def texts(self, chat: str) -> list[str]:
        return [
            "".join(s["data"]["text"] for s in m["segments"] if s["type"] == "text")
            for m in self.to(chat)
            if any(s["type"] == "text" for s in m["segments"])
        ]

    # the implementation's side

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        header = request.headers.get("Authorization", "").split("Bearer ")[-1]
        given = request.query.get("access_token") or header
        if self.token and given != self.token:
            self.refused += 1
            await ws.send_str(json.dumps(_answer(None, "failed", 1403, "token验证失败", None)))
            await ws.close()
            return ws
        self.connections += 1
        self.clients.append(ws)
        self.hung = False
        await ws.send_str(json.dumps(self._meta("lifecycle", sub_type="connect")))
        beating = asyncio.get_running_loop().create_task(self._heartbeat(ws))
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT and not self.hung:
                    await ws.send_str(json.dumps(await self._call(message.data)))
        finally:
            beating.cancel()
            self.clients.remove(ws)
        return ws

    async def _heartbeat(self, ws: web.WebSocketResponse) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_ms / 1000)
            if not self.hung:
                event = self._meta("heartbeat", interval=self.heartbeat_ms)
                event["status"] = {"online": True, "good": True}
                await ws.send_str(json.dumps(event))
                self.heartbeats += 1

    def _meta(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {
            "time": int(time.time()),
            "self_id": BOT,
            "post_type": "meta_event",
            "meta_event_type": kind,
            **fields,
        }

    async def _call(self, raw: str) -> dict[str, Any]:
        try:
            request = json.loads(raw)
        except ValueError:
            return _answer(None, "failed", 1400, "json解析失败,请检查数据格式", None)
        echo, action = request.get("echo"), request.get("action")
        params = request.get("params") or {}
        self.calls.append({"action": action, "params": params})
        handler = getattr(self, f"_do_{action}", None)
        if handler is None:
            return _answer(None, "failed", 1404, f"不支持的API {action}", echo)
        try:
            return _answer(handler(params), "ok", 0, "", echo)
        except OneBotFailure as exc:
            return _answer(None, "failed", exc.retcode, str(exc), echo)

    def _do_get_login_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"user_id": BOT, "nickname": "msgvoice-bot"}

    def _do_get_version_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"app_name": "NapCat.Onebot", "app_version": "4.8.0", "protocol_version": "v11"}

    def _do_send_msg(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("group_id"):
            return self._do_send_group_msg(params)
        return self._do_send_private_msg(params)

    def _do_send_private_msg(self, params: dict[str, Any]) -> dict[str, Any]:
        user = _number(params, "user_id")
        if user not in self.friends:
            raise OneBotFailure(1200, "无法获取用户信息")
        return self._sent("send_private_msg", f"user:{user}", params)

    def _do_send_group_msg(self, params: dict[str, Any]) -> dict[str, Any]:
        group = _number(params, "group_id")
        if group not in self.groups:
            raise OneBotFailure(1200, "发送消息失败")
        return self._sent("send_group_msg", f"group:{group}", params)

    def _sent(self, action: str, chat: str, params: dict[str, Any]) -> dict[str, Any]:
        message = params.get("message")
        if isinstance(message, str):
            segments = parse_cq(message)
        elif isinstance(message, dict):
            segments = [message]
        elif isinstance(message, list) and message:
            segments = message
        else:
            raise OneBotFailure(1400, "Key: message, Message: Expected union value")
        for seg in segments:
            if seg.get("type") == "record":
                _check_record(seg.get("data") or {})
        self.sent.append({"action": action, "target": chat, "segments": segments})
        return {"message_id": next(self._ids)}


def _number(params: dict[str, Any], key: str) -> int:
    try:
        return int(params[key])
    except (KeyError, TypeError, ValueError):
        raise OneBotFailure(1400, f"Key: {key}, Message: Expected required property") from None


def _check_record(data: dict[str, Any]) -> None:
    file = str(data.get("file", ""))
    if file.startswith("base64://"):
        head = base64.b64decode(file.removeprefix("base64://"))[:10]
    else:
        path = Path(file.removeprefix("file://"))
        if not path.is_file():
            raise OneBotFailure(1200, f"文件不存在: {file[:60]}")
        head = path.read_bytes()[:10]
    if b"#!SILK" not in head:
        raise OneBotFailure(1200, "语音转换失败, 请检查语音文件是否正常")


def _answer(data: Any, status: str, retcode: int, message: str, echo: Any) -> dict[str, Any]:
    return {
        "status": status,
        "retcode": retcode,
        "data": data,
        "message": message,
        "wording": message,
        "echo": echo,
        "stream": "normal-action",
    }
