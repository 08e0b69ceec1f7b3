"""A loopback Discord: the REST API (v10) and the Gateway, after discord/discord-api-docs
(developers/…, cited per part) and discord.py 2.7's client (`http.py`, `gateway.py`), whose
expectations are the ones a real server meets.

REST, under /api/v10, `Authorization: Bot <token>` (401 {"code": 0, "message": "401:
Unauthorized"} otherwise; `revoked` makes every call so):
- GET /users/@me, /oauth2/applications/@me and /applications/@me: the bot and its application
  (`flags` carries GATEWAY_MESSAGE_CONTENT, 1 << 19, when `content_intent` is granted);
  GET /gateway/bot: this server's Gateway URL (resources/application.mdx, events/gateway.mdx).
- PUT /applications/{app}/commands: bulk overwrite of the global commands, answered with them
  (interactions/application-commands.mdx).
- POST /interactions/{id}/{token}/callback (204; 200 with the callback object when
  `with_response`), GET/PATCH/DELETE /webhooks/{app}/{token}/messages/@original, POST
  /webhooks/{app}/{token} (interactions/receiving-and-responding.mdx): an interaction not
  answered within 3 s is "10062 Unknown interaction"; its token works for 15 minutes.
- POST /channels/{id}/messages, JSON or multipart (`payload_json` + `files[n]`,
  reference.mdx "Uploading Files"). A voice message (resources/message.mdx "Voice Messages"):
  flag IS_VOICE_MESSAGE (1 << 13), exactly one attachment whose Content-Type starts with
  `audio/`, `duration_secs` and a base64 `waveform` of at most 256 bytes, and no content;
  otherwise 400 50035 "Invalid Form Body". `enforce_nonce` with a `nonce` seen before returns
  that message and creates none (resources/message.mdx "Create Message").
- Refusals (topics/opcodes-and-status-codes.mdx "JSON Error Codes"): a channel in `no_voice`
  answers a voice message 403 50173; in `no_access` 403 50001 "Missing Access"; in
  `no_permission` 403 50013 "Missing Permissions".
- Rate limits (topics/rate-limits.mdx): every answer carries X-RateLimit-Limit/-Remaining/
  -Reset-After/-Bucket; `limit(n, retry_after, glob)` makes the next n message creates answer
  429 {"message", "retry_after", "global"} with Retry-After, X-RateLimit-Scope and, when
  global, X-RateLimit-Global, and the `Via` header Discord's proxies add (discord.py treats a
  429 without it as a Cloudflare ban). A request inside the wait is answered 429 again.

Gateway (events/gateway.mdx, topics/opcodes-and-status-codes.mdx): HELLO (op 10), IDENTIFY
(op 2; an unknown token closes 4004, an intent not granted 4014), READY with `session_id`
and `resume_gateway_url`, heartbeats (op 1 → op 11), DISPATCH (op 0) numbered by `s`; RESUME
(op 6) replays what the session missed after its `seq`, then RESUMED; an unknown session gets
INVALID_SESSION (op 9, false). `drop()` cuts the connection without a close frame, as a
network does. Transport compression `zlib-stream` (one zlib context per connection, each
message ended by Z_SYNC_FLUSH's 00 00 ff ff) as discord.py asks for it. Without the Message
Content intent, a guild message that does not mention the bot arrives with empty `content`
(events/gateway.mdx "Message Content Intent"); DMs and mentions keep theirs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

TOKEN = "MTIz.fake.discord-bot-token"
BOT_ID, APP_ID = "1100", "1100"
MESSAGE_CONTENT_INTENT = 1 << 15
GATEWAY_MESSAGE_CONTENT = 1 << 19
IS_VOICE_MESSAGE = 1 << 13
INTERACTION_DEADLINE_S = 3.0
TOKEN_LIFETIME_S = 15 * 60.0
_ids = itertools.count(1_300_000_000_000_000_000)


def snowflake() -> str:
    return str(next(_ids))


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with Content-Type exactly `application/json`, as Discord sends it: discord.py
    (`http.json_or_text`) reads any other type, even with a charset, as text."""
    headers = {**(headers or {}), "Content-Type": "application/json"}
    return web.Response(body=json.dumps(body).encode(), status=status, headers=headers)


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"code": code, "message": message}, status=status)


def user(user_id: str, name: str, bot: bool = False) -> dict[str, Any]:
    return {
        "id": user_id,
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": None,
        "bot": bot,
    }


BOT = user(BOT_ID, "msgvoice", bot=True)


@dataclass
class Interaction:
    """One slash command as the Gateway delivered it, and what the bot answered."""

    id: str
    token: str
    channel_id: str
    at: float
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    original: dict[str, Any] | None = None
    """The original response as it stands (after a deferral, its edits); None once deleted."""
    edits: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False


@dataclass
class Session:
    id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    """Every dispatch of the session, numbered by `s`, for a RESUME to replay."""
    socket: web.WebSocketResponse | None = None
    compress: Any = None


@dataclass
class FakeDiscord:
    content_intent: bool = False
    """The application has the Message Content intent switched on in the Developer Portal."""
    no_voice: set[str] = field(default_factory=set)
    no_access: set[str] = field(default_factory=set)
    no_permission: set[str] = field(default_factory=set)
    revoked: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Created messages: channel_id, payload (its JSON), files [{name, filename, type, data}],
    at (monotonic)."""
    commands: list[dict[str, Any]] = field(default_factory=list)
    interactions: dict[str, Interaction] = field(default_factory=dict)
    identifies: int = 0
    resumes: int = 0
    answers: list[tuple[str, int]] = field(default_factory=list)
    """(route, status) of every REST answer, in order."""

    def __post_init__(self) -> None:
        self._limits: list[tuple[float, bool]] = []
        self._limited_until = 0.0
        self._nonces: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, Session] = {}
        self._live: Session | None = None
        self._writing: dict[int, asyncio.Lock] = {}
        self.connected = asyncio.Event()

    # --- what tests do -------------------------------------------------------------------

    def limit(self, times: int, retry_after: float, glob: bool = False) -> None:
        """The next `times` message creates answer 429 with `retry_after`."""
        self._limits += [(retry_after, glob)] * times

    def say(self, channel: str, author: str, content: str, guild: str | None = None) -> None:
        """Someone writes in a channel (a DM when `guild` is None): MESSAGE_CREATE."""
        mentions = [BOT] if f"<@{BOT_ID}>" in content else []
        readable = guild is None or mentions or self._intent_granted()
        message = {
            "id": snowflake(),
            "channel_id": channel,
            "author": user(author, f"user{author}"),
            "content": content if readable else "",
            "timestamp": "2026-12-03T08:00:00.000000+00:00",
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": mentions,
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            **({"guild_id": guild} if guild else {}),
        }
        self.dispatch("MESSAGE_CREATE", message)

    def slash(
        self, channel: str, author: str, name: str, value: str | None, guild: str | None = None
    ) -> Interaction:
        """Someone uses a slash command: INTERACTION_CREATE (type 2, APPLICATION_COMMAND)."""
        command = next(c for c in self.commands if c["name"] == name)
        named = [o["name"] for o in command["options"]][:1]
        options = [{"name": n, "type": 3, "value": value} for n in named]
        who = user(author, f"user{author}")
        where: dict[str, Any] = (
            {
                "guild_id": guild,
                "member": {
                    "user": who,
                    "roles": [],
                    "permissions": "0",
                    "joined_at": "2026-01-01T00:00:00+00:00",
                    "deaf": False,
                    "mute": False,
                    "flags": 0,
                },
            }
            if guild
            else {"user": who}
        )
        found = Interaction(snowflake(), f"itoken-{snowflake()}", channel, time.monotonic())
        self.interactions[found.token] = found
        self.dispatch(
            "INTERACTION_CREATE",
            {
                "id": found.id,
                "application_id": APP_ID,
                "type": 2,
                "data": {
                    "id": command["id"],
                    "name": name,
                    "type": 1,
                    "options": options if value is not None else [],
                },
                "channel_id": channel,
                "channel": _partial_channel(channel, guild, who),
                "token": found.token,
                "version": 1,
                "locale": "zh-CN",
                "app_permissions": "0",
                "entitlements": [],
                "attachment_size_limit": 10 * 2**20,
                "authorizing_integration_owners": {"0": guild} if guild else {"1": author},
                "context": 0 if guild else 1,
                **where,
            },
        )
        return found

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """An event for the current session: sent now if it is connected, else kept for the
        RESUME (Discord holds a session's events for a while after a drop)."""
        session = self._live or next(reversed(self._sessions.values()), None)
        assert session is not None, "no session: the bot never identified"
        frame = {"op": 0, "t": event, "s": len(session.events) + 1, "d": data}
        session.events.append(frame)
        if session.socket is not None and not session.socket.closed:
            # bound to this connection now: a frame must not go out on the one a RESUME
            # makes later (that one gets it from the replay, in order)
            send = self._send_on(session.socket, session.compress, frame)
            asyncio.get_running_loop().create_task(send)

    async def drop(self) -> None:
        """The connection dies without a close frame."""
        session = self._live
        assert session is not None and session.socket is not None
        self._live, self.connected = None, asyncio.Event()
        transport = session.socket._req.transport if session.socket._req else None
        if transport is not None:
            transport.abort()

    def voice_messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages
            if m["payload"].get("flags", 0) & IS_VOICE_MESSAGE
            and channel in (None, m["channel_id"])
        ]

    def texts(self, channel: str) -> list[str]:
        return [
            m["payload"]["content"]
            for m in self.messages
            if m["channel_id"] == channel and m["payload"].get("content")
        ]

    # --- REST ----------------------------------------------------------------------------

    def _intent_granted(self) -> bool:
        return self.content_intent

    async def _rest(self, request: web.Request) -> web.Response:
        route = f"{request.method} {request.match_info['path']}"
        if request.headers.get("Authorization") != f"Bot {TOKEN}" or self.revoked:
            answer = _error(401, 0, "401: Unauthorized")
        else:
            answer = await self._route(request, request.match_info["path"].split("/"))
        answer.headers.update(
            {
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "4",
                "X-RateLimit-Reset-After": "1.0",
                "X-RateLimit-Bucket": f"bucket-{route.split()[1].split('/', maxsplit=1)[0]}",
                "Via": "1.1 google",
            }
        )
        self.answers.append((route, answer.status))
        return answer

    async def _route(  # noqa: PLR0911 (one answer per route)
        self, request: web.Request, path: list[str]
    ) -> web.Response:
        match request.method, path:
            case "GET", ["users", "@me"]:
                return _json(BOT)
            case "GET", ["oauth2" | "applications", *_]:
                return _json(self._application())
            case "GET", ["gateway", "bot"]:
                host = request.host
                return _json(
                    {
                        "url": f"ws://{host}/gateway",
                        "shards": 1,
                        "session_start_limit": {
                            "total": 1000,
                            "remaining": 999,
                            "reset_after": 0,
                            "max_concurrency": 1,
                        },
                    }
                )
            case "PUT", ["applications", _, "commands"]:
                self.commands = [
                    {**c, "id": snowflake(), "application_id": APP_ID} for c in await request.json()
                ]
                return _json(self.commands)
            case "POST", ["interactions", _, token, "callback"]:
                return await self._callback(request, token)
            case _, ["webhooks", _, token, *rest]:
                return await self._webhook(request, token, rest)
            case "POST", ["channels", channel, "messages"]:
                return await self._create(request, channel)
        return _error(404, 0, "404: Not Found")

    def _application(self) -> dict[str, Any]:
        return {
            "id": APP_ID,
            "name": "msgvoice",
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": user("42", "owner"),
            "flags": GATEWAY_MESSAGE_CONTENT if self.content_intent else 0,
            "interactions_endpoint_url": None,
        }

    async def _callback(self, request: web.Request, token: str) -> web.Response:
        found = self.interactions.get(token)
        if found is None or found.callbacks or time.monotonic() - found.at > INTERACTION_DEADLINE_S:
            return _error(404, 10062, "Unknown interaction")
        body = await request.json()
        found.callbacks.append(body)
        found.original = {"id": snowflake(), "content": "", "flags": 0, **body.get("data", {})}
        if request.query.get("with_response") in ("1", "true"):
            return _json(
                {
                    "interaction": {"id": found.id, "type": 2, "response_message_loading": True},
                    "resource": {"type": body["type"]},
                }
            )
        return web.Response(status=204)

    async def _webhook(self, request: web.Request, token: str, rest: list[str]) -> web.Response:
        found = self.interactions.get(token)
        if found is None or time.monotonic() - found.at > TOKEN_LIFETIME_S:
            return _error(404, 10015, "Unknown Webhook")
        if rest == ["messages", "@original"]:
            if found.original is None:
                return _error(404, 10008, "Unknown Message")
            if request.method == "DELETE":
                found.original, found.deleted = None, True
                return web.Response(status=204)
            if request.method == "PATCH":
                payload, files = await _body(request)
                found.edits.append({"payload": payload, "files": files})
                found.original.update(payload)
            return _json({**found.original, "channel_id": found.channel_id})
        return _error(405, 0, "405: Method Not Allowed")

    async def _create(self, request: web.Request, channel: str) -> web.Response:
        now = time.monotonic()
        if self._limits or now < self._limited_until:
            retry_after, glob = self._limits.pop(0) if self._limits else (1.0, False)
            self._limited_until = max(self._limited_until, now + retry_after)
            headers = {"Retry-After": str(retry_after), "X-RateLimit-Scope": "user"}
            if glob:
                headers |= {"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global"}
            body = {
                "message": "You are being rate limited.",
                "retry_after": retry_after,
                "global": glob,
            }
            return _json(body, status=429, headers=headers)
        payload, files = await _body(request)
        if (refusal := self._refusal(channel, payload, files)) is not None:
            return refusal
        if payload.get("enforce_nonce") and payload.get("nonce") in self._nonces:
            return _json(self._nonces[payload["nonce"]])
        message = {
            "id": snowflake(),
            "channel_id": channel,
            "payload": payload,
            "files": files,
            "at": time.monotonic(),
        }
        self.messages.append(message)
        if payload.get("nonce"):
            self._nonces[str(payload["nonce"])] = _shown(message)
        return _json(_shown(message))

    def _refusal(
        self, channel: str, payload: dict[str, Any], files: list[dict[str, Any]]
    ) -> web.Response | None:
        voice = bool(payload.get("flags", 0) & IS_VOICE_MESSAGE)
        if channel in self.no_access:
            return _error(403, 50001, "Missing Access")
        if channel in self.no_permission:
            return _error(403, 50013, "Missing Permissions")
        if voice and channel in self.no_voice:
            return _error(403, 50173, "Cannot send voice messages in this channel")
        if voice and (problem := _not_a_voice_message(payload, files)):
            return _error(400, 50035, f"Invalid Form Body: {problem}")
        return None

    # --- Gateway -------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        compress = zlib.compressobj() if request.query.get("compress") == "zlib-stream" else None
        session = Session("", socket=socket, compress=compress)
        await self._send(session, {"op": 10, "d": {"heartbeat_interval": 41250}})
        async for frame in socket:
            if frame.type != WSMsgType.TEXT:
                break
            message = json.loads(frame.data)
            session = await self._op(session, socket, message) or session
        return socket

    async def _op(
        self, session: Session, socket: web.WebSocketResponse, message: dict[str, Any]
    ) -> Session | None:
        op, data = message.get("op"), message.get("d")
        if op == 1:
            await self._send(session, {"op": 11})
        elif op == 2:
            return await self._identify(session, socket, data)
        elif op == 6:
            return await self._resume(session, socket, data)
        return None

    async def _identify(
        self, session: Session, socket: web.WebSocketResponse, data: dict[str, Any]
    ) -> Session | None:
        if data.get("token") != TOKEN or self.revoked:
            await socket.close(code=4004, message=b"Authentication failed.")
            return None
        if int(data.get("intents", 0)) & MESSAGE_CONTENT_INTENT and not self.content_intent:
            await socket.close(code=4014, message=b"Disallowed intent(s).")
            return None
        self.identifies += 1
        fresh = Session(snowflake(), socket=socket, compress=session.compress)
        self._sessions[fresh.id] = self._live = fresh
        ready = {
            "v": 10,
            "user": BOT,
            "guilds": [],
            "session_id": fresh.id,
            "resume_gateway_url": f"ws://{self.host}/gateway",
            "application": {"id": APP_ID, "flags": self._application()["flags"]},
        }
        self.dispatch("READY", ready)
        self.connected.set()
        return fresh

    async def _resume(
        self, session: Session, socket: web.WebSocketResponse, data: dict[str, Any]
    ) -> Session | None:
        known = self._sessions.get(str(data.get("session_id")))
        if known is None or data.get("token") != TOKEN:
            await self._send(session, {"op": 9, "d": False})
            return None
        self.resumes += 1
        known.socket, known.compress, self._live = socket, session.compress, known
        for frame in known.events[int(data.get("seq") or 0) :]:
            await self._send(known, frame)
        self.dispatch("RESUMED", {})
        self.connected.set()
        return known

    async def _send(self, session: Session, frame: dict[str, Any]) -> None:
        if session.socket is not None:
            await self._send_on(session.socket, session.compress, frame)

    async def _send_on(
        self, socket: web.WebSocketResponse, compress: Any, frame: dict[str, Any]
    ) -> None:
        """One frame on one connection, in the order sent (one zlib stream per connection:
        chunks compressed in one order and written in another would corrupt it). A frame for
        a connection that died is lost, as on Discord; the session keeps it for a RESUME."""
        async with self._writing.setdefault(id(socket), asyncio.Lock()):
            if socket.closed:
                return
            data = json.dumps(frame).encode()
            with contextlib.suppress(ConnectionResetError):  # aiohttp's is one of these
                if compress is None:
                    await socket.send_str(data.decode())
                else:
                    await socket.send_bytes(
                        compress.compress(data) + compress.flush(zlib.Z_SYNC_FLUSH)
                    )

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application(client_max_size=30 * 2**20)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.host = f"127.0.0.1:{self._runner.addresses[0][1]}"
        self.url = f"http://{self.host}/api/v10"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


async def _body(request: web.Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A JSON body, or a multipart one: `payload_json` and its `files[n]`."""
    if request.content_type != "multipart/form-data":
        return dict(await request.json()), []
    payload: dict[str, Any] = {}
    files = []
    async for part in await request.multipart():
        name = part.name or ""
        data = await part.read()  # type: ignore[union-attr]  # a body part, not a nested one
        if name == "payload_json":
            payload = json.loads(data)
        elif name.startswith("files["):
            ctype = part.headers.get("Content-Type", "")
            files.append({"name": name, "filename": part.filename, "type": ctype, "data": data})
    return payload, files


def _not_a_voice_message(  # noqa: PLR0911 (one answer per rule)
    payload: dict[str, Any], files: list[dict[str, Any]]
) -> str | None:
    """What makes a message flagged IS_VOICE_MESSAGE not one (resources/message.mdx)."""
    attachments = payload.get("attachments") or []
    if payload.get("content") or payload.get("embeds") or payload.get("sticker_ids"):
        return "a voice message has no content, embeds or stickers"
    if len(files) != 1 or len(attachments) != 1:
        return "a voice message has exactly one attachment"
    meta, upload = attachments[0], files[0]
    if upload["name"] != f"files[{meta.get('id')}]":
        return "the attachment's id names no file"
    if not upload["type"].startswith("audio/"):
        return "the attachment's Content-Type must begin with audio/"
    if not isinstance(meta.get("duration_secs"), int | float) or "waveform" not in meta:
        return "duration_secs and waveform are required"
    try:
        waveform = base64.b64decode(meta["waveform"], validate=True)
    except (binascii.Error, TypeError):
        return "waveform is not base64"
    return "waveform is over 256 bytes" if len(waveform) > 256 else None


def _partial_channel(channel: str, guild: str | None, who: dict[str, Any]) -> dict[str, Any]:
    """An interaction's `channel` (receiving-and-responding.mdx: a partial channel: id, name,
    type, permissions, … ; a DM's carries its recipients)."""
    if guild is None:
        return {"id": channel, "type": 1, "recipients": [who], "last_message_id": None}
    return {
        "id": channel,
        "type": 0,
        "name": f"channel-{channel}",
        "guild_id": guild,
        "position": 0,
        "permissions": "2248473465835073",
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "flags": 0,
    }


def _shown(message: dict[str, Any]) -> dict[str, Any]:
    """A created message as the API answers it (resources/message.mdx "Message Object")."""
    payload = message["payload"]
    attachments = [
        {**meta, "size": len(f["data"]), "content_type": f["type"], "url": "", "proxy_url": ""}
        for meta, f in zip(payload.get("attachments") or [], message["files"], strict=False)
    ]
    return {
        "id": message["id"],
        "channel_id": message["channel_id"],
        "author": BOT,
        "content": payload.get("content", ""),
        "timestamp": "2026-12-03T08:00:00.000000+00:00",
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": attachments,
        "embeds": [],
        "pinned": False,
        "type": 0,
        "flags": payload.get("flags", 0),
        "nonce": payload.get("nonce"),
    }
