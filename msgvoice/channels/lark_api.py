"""Feishu / Lark as msgvoice talks to it: the open platform's REST API over httpx, and the
frames of its long connection (what lark-oapi's `ws/client.py` and `ws/pb/pbbp2.proto` speak).

REST (open.feishu.cn/document: "tenant_access_token 内部应用", "上传文件", "发送消息"):
- POST /open-apis/auth/v3/tenant_access_token/internal {app_id, app_secret} → the tenant
  token and its `expire` (seconds, at most 2 h; a token with under 30 minutes left is
  replaced by a new one when asked). It is asked again before then, and at once when an
  answer says it is invalid (99991661, 99991663, 99991668).
- POST /open-apis/im/v1/files (multipart: file_type "opus", file_name, duration in ms, file)
  → `file_key`; POST /open-apis/im/v1/messages?receive_id_type=chat_id {receive_id,
  msg_type "audio" with {"file_key"} or "text" with {"text"}, uuid}: the `uuid` makes a send
  retried within the hour post once.
- Every answer carries `code` and `msg`. Transient: HTTP 5xx, 429 and 99991400 (the app's
  rate limit: wait `x-ogw-ratelimit-reset` seconds), 230020 (the chat's rate limit), an
  invalid token (asked again). Permanent, for that item: 230002 (the bot is not in the group),
  230006 (bot ability not enabled), 230013 (the user is outside the bot's availability),
  230027 and 99991672 (a scope the app lacks), 230011 (the message was recalled), any other 4xx.

Long connection: POST /callback/ws/endpoint {AppID, AppSecret} answers the WebSocket URL
(with `device_id` and `service_id`) and the ClientConfig (PingInterval, in seconds). Frames are
protobuf `pbbp2.Frame`s: method 0 (control: "ping" from us every PingInterval, "pong" back,
maybe with a new ClientConfig), method 1 (data: headers type "event", message_id, sum, seq,
trace_id; an event split in `sum` parts is joined by message_id). Each data frame is answered
with itself, its payload replaced by {"code": 200}: an event not answered is pushed again.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from msgvoice.channels.outbox import ChannelError

PREFIX = "feishu:"
TEXT_LIMIT = 10_000
"""Characters per text message (the body may be 150 KB; a long one reads better in parts)."""
INVALID_TOKEN = {99991661, 99991663, 99991668}
RATE_LIMITED = {99991400, 230020}
PERMANENT = {230002, 230006, 230011, 230013, 230027, 99991672}
REFRESH_AHEAD_S = 1800.0
"""Ask for a new tenant token when the one held has this little time left (Feishu's own
threshold for handing out a new one)."""
CONTROL, DATA = 0, 1


def _frame_class() -> Any:
    """`pbbp2.Frame` (lark-oapi's ws/pb/pbbp2.proto, proto2) built from its descriptor."""
    req, opt, rep = 2, 1, 3
    proto = descriptor_pb2.FileDescriptorProto(
        name="msgvoice_pbbp2.proto", package="pbbp2", syntax="proto2"
    )
    header = proto.message_type.add(name="Header")
    header.field.add(name="key", number=1, type=9, label=req)
    header.field.add(name="value", number=2, type=9, label=req)
    frame = proto.message_type.add(name="Frame")
    fields = [
        ("SeqID", 1, 4, req),
        ("LogID", 2, 4, req),
        ("service", 3, 5, req),
        ("method", 4, 5, req),
        ("headers", 5, 11, rep),
        ("payload_encoding", 6, 9, opt),
        ("payload_type", 7, 9, opt),
        ("payload", 8, 12, opt),
        ("LogIDNew", 9, 9, opt),
    ]
    for name, number, kind, label in fields:
        field = frame.field.add(name=name, number=number, type=kind, label=label)
        if kind == 11:
            field.type_name = ".pbbp2.Header"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pbbp2.Frame"))


Frame = _frame_class()


def headers_of(frame: Any) -> dict[str, str]:
    return {h.key: h.value for h in frame.headers}


def ping(service: int) -> bytes:
    frame = Frame(SeqID=0, LogID=0, service=service, method=CONTROL)
    frame.headers.add(key="type", value="ping")
    return bytes(frame.SerializeToString())


def acknowledged(frame: Any, took_ms: int) -> bytes:
    """A data frame's answer: itself, with {"code": 200} for payload (lark-oapi's Response)."""
    frame.headers.add(key="biz_rt", value=str(took_ms))
    frame.payload = json.dumps({"code": 200}).encode()
    return bytes(frame.SerializeToString())


class CredentialsRefused(RuntimeError):
    """Feishu refused the app's id or secret: the channel stops (not the daemon)."""


def failure(what: str, response: httpx.Response) -> ChannelError:
    """A refused REST answer as the outbox understands it, Feishu's code in the line."""
    body = _json(response)
    code = body.get("code")
    reason = f"feishu {what}: HTTP {response.status_code}, code {code}: {body.get('msg', '')}"
    if code in RATE_LIMITED or response.status_code == 429:
        reset = response.headers.get("x-ogw-ratelimit-reset", "")
        return ChannelError(reason, float(reset) if reset.isdigit() else None)
    if code in INVALID_TOKEN or response.status_code >= 500:
        return ChannelError(reason, 0.0 if code in INVALID_TOKEN else None)
    return ChannelError(reason, permanent=True)  # PERMANENT, and every other refusal


class Api:
    """The REST API for one app, its tenant token held and renewed."""

    def __init__(self, client: httpx.AsyncClient, domain: str, app_id: str, secret: str) -> None:
        self.client, self.base = client, domain.rstrip("/")
        self.app_id, self.secret = app_id, secret
        self._token, self._expires_at, self._lifetime_s = "", 0.0, 0.0

    async def token(self) -> str:
        """The tenant token, asked for again when little of its life is left."""
        left = self._expires_at - time.monotonic()
        if self._token and left > min(REFRESH_AHEAD_S, self._lifetime_s / 2):
            return self._token
        try:
            response = await self.client.post(
                f"{self.base}/open-apis/auth/v3/tenant_access_token/internal",
                json={"app_id": self.app_id, "app_secret": self.secret},
            )
        except httpx.HTTPError as exc:
            raise ChannelError(f"feishu token: {type(exc).__name__}: {exc}") from exc
        body = _json(response)
        if body.get("code") != 0:
            if response.status_code < 500 and body.get("code") not in (None, *RATE_LIMITED):
                raise CredentialsRefused(f"code {body.get('code')}: {body.get('msg')}")
            raise failure("token", response)
        token, expire = body.get("tenant_access_token"), body.get("expire")
        if not isinstance(token, str) or not token:
            raise ChannelError("feishu token: the answer holds no tenant_access_token")
        self._lifetime_s = float(expire) if isinstance(expire, int | float) and expire > 0 else 7200
        self._token = token
        self._expires_at = time.monotonic() + self._lifetime_s
        return self._token

    async def call(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        """`data` of an answer with code 0; ChannelError otherwise (an invalid token is
        forgotten, so the next try asks for a new one)."""
        try:
            headers = {"Authorization": f"Bearer {await self.token()}"}
        except CredentialsRefused as exc:  # revoked while running: a state, retried
            raise ChannelError(f"feishu {what}: the app's credentials were refused: {exc}") from exc
        try:
            response = await self.client.request(
                method, f"{self.base}{path}", headers=headers, **kwargs
            )
        except httpx.HTTPError as exc:
            raise ChannelError(f"feishu {what}: {type(exc).__name__}: {exc}") from exc
        body = _json(response)
        if response.is_success and body.get("code") == 0:
            data = body.get("data")
            return data if isinstance(data, dict) else {}
        if body.get("code") in INVALID_TOKEN:
            self._token = ""
        raise failure(what, response)

    async def upload_voice(self, data: bytes, duration_ms: int) -> str:
        form = {"file_type": "opus", "file_name": "voice.opus", "duration": str(duration_ms)}
        files = {"file": ("voice.opus", data, "audio/ogg")}
        done = await self.call("POST", "/open-apis/im/v1/files", "upload", data=form, files=files)
        return str(done["file_key"])

    async def send(self, chat: str, msg_type: str, content: dict[str, Any], uuid: str) -> None:
        body = {
            "receive_id": chat,
            "msg_type": msg_type,
            "content": json.dumps(content, ensure_ascii=False),
            "uuid": uuid,
        }
        path = "/open-apis/im/v1/messages?receive_id_type=chat_id"
        await self.call("POST", path, f"send {msg_type}", json=body)

    async def bot(self) -> dict[str, Any]:
        """The bot's own record (open_id, app_name): GET /open-apis/bot/v3/info."""
        headers = {"Authorization": f"Bearer {await self.token()}"}
        try:
            response = await self.client.get(f"{self.base}/open-apis/bot/v3/info", headers=headers)
        except httpx.HTTPError as exc:
            raise ChannelError(f"feishu bot info: {type(exc).__name__}: {exc}") from exc
        body = _json(response)
        if body.get("code") != 0:
            raise failure("bot info", response)
        bot = body.get("bot")
        return bot if isinstance(bot, dict) else {}

    async def endpoint(self) -> tuple[str, float]:
        """The long connection's URL and its ping interval in seconds."""
        try:
            response = await self.client.post(
                f"{self.base}/callback/ws/endpoint",
                json={"AppID": self.app_id, "AppSecret": self.secret},
                headers={"locale": "zh"},
            )
        except httpx.HTTPError as exc:
            raise ChannelError(f"feishu endpoint: {type(exc).__name__}: {exc}") from exc
        body = _json(response)
        code = body.get("code")
        if code == 0 and isinstance(body.get("data"), dict) and body["data"].get("URL"):
            config = body["data"].get("ClientConfig")
            given = config.get("PingInterval") if isinstance(config, dict) else None
            ping_s = float(given) if isinstance(given, int | float) and given > 0 else 120.0
            return str(body["data"]["URL"]), ping_s
        if response.status_code < 500 and code not in (None, 1, 1000040343):
            raise CredentialsRefused(f"code {code}: {body.get('msg')}")
        raise failure("endpoint", response)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
