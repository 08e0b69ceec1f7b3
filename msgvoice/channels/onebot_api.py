"""OneBot v11 as QQ's implementations speak it over their forward WebSocket (the spec:
botuniverse/onebot-11, communication/ws.md, api/public.md, message/*.md, event/*.md; NapCat's
`network/websocket-server.ts` and `action/OneBotAction.ts` for what a real one does).

One connection at `/` carries both directions: events pushed as JSON objects with a
`post_type`, and API calls `{"action", "params", "echo"}` answered by `{"status", "retcode",
"data", "echo"}` in any order, so each answer is matched to its call by `echo`. The access
token goes in `Authorization: Bearer` (the spec also allows `?access_token=`); a wrong one is
refused at the handshake (401/403) or, by NapCat, with a `retcode` 1403 answer and a close.

What a refusal means: `status` "ok" (retcode 0) and "async" (1: taken, the outcome unknown)
are success; 1400 (bad parameters), 1404 (no such API), 100 (go-cqhttp and LLOneBot's bad
parameters) and 1401/1403 (not allowed) never heal; anything else "failed" (NapCat answers
1200 with the error's message for whatever went wrong inside QQ: a timeout, a group the bot
left, a message QQ would not take) cannot say whether it will, so it is tried a few times.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from msgvoice.channels.outbox import ChannelError

log = logging.getLogger(__name__)
_ENDED = {
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
}
PREFIX = "qq:"
USER, GROUP = "user:", "group:"
"""Chats: `qq:user:<QQ number>` (a private chat) and `qq:group:<group number>`."""
TEXT_LIMIT = 2000
"""Characters per text message (QQ gives bots no figure; longer texts fold in its clients)."""
VOICE_MAX_S = 60.0
"""QQ's voice messages are a minute at most (its clients record no longer): parts beyond."""
NEVER_HEALS = {100, 1400, 1401, 1403, 1404}
UNEXPLAINED_TRIES = 3
REFUSED_TOKEN = {1401, 1403}
_CQ = re.compile(r"\[CQ:([a-zA-Z0-9_.-]+)((?:,[^\]]*)?)\]")


class LoginRefused(RuntimeError):
    """The implementation refused the access token: the channel stops (not the daemon)."""


def chat_of(event: dict[str, Any]) -> str | None:
    """A message event's chat id, or None for what is not a private or group message (or
    whose numbers are not numbers)."""
    kind = event.get("message_type")
    if kind == "private" and (user := number(event.get("user_id"))):
        return f"{PREFIX}{USER}{user}"
    if kind == "group" and (group := number(event.get("group_id"))):
        return f"{PREFIX}{GROUP}{group}"
    return None


def number(value: Any) -> str | None:
    """A QQ or group number as OneBot sends it (int64, or its digits), else None."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    text = str(value)
    return text if text.isascii() and text.isdigit() and len(text) <= 20 else None


def target(chat_id: str) -> tuple[str, dict[str, int]]:
    """The send action and its address for a chat id."""
    kind, _, digits = chat_id.removeprefix(PREFIX).partition(":")
    if kind + ":" == GROUP:
        return "send_group_msg", {"group_id": int(digits)}
    return "send_private_msg", {"user_id": int(digits)}


def _unescape(text: str) -> str:
    return (
        text.replace("&#91;", "[").replace("&#93;", "]").replace("&#44;", ",").replace("&amp;", "&")
    )


def segments(message: Any) -> list[dict[str, Any]]:
    """A message in either of OneBot's formats (message/array.md, message/string.md: CQ codes
    in text, `&[],` escaped) as segments `{"type", "data"}`."""
    if isinstance(message, list):
        return [s for s in message if isinstance(s, dict) and isinstance(s.get("data"), dict)]
    if isinstance(message, dict):
        return segments([message])
    if not isinstance(message, str):
        return []
    out: list[dict[str, Any]] = []
    at = 0
    for code in _CQ.finditer(message):
        if code.start() > at:
            out.append({"type": "text", "data": {"text": _unescape(message[at : code.start()])}})
        params = (p.partition("=") for p in code.group(2)[1:].split(",") if p)
        out.append({"type": code.group(1), "data": {k: _unescape(v) for k, _, v in params}})
        at = code.end()
    if at < len(message):
        out.append({"type": "text", "data": {"text": _unescape(message[at:])}})
    return out


def read(message: Any, me: str) -> tuple[str | None, bool]:
    """A message's text (None when it holds none: a picture, a voice note) and whether it
    @-mentions the bot (QQ number `me`); other people's @ and replies are left out."""
    parts, mentioned = [], False
    for segment in segments(message):
        kind, data = segment.get("type"), segment["data"]
        if kind == "text":
            parts.append(str(data.get("text", "")))
        elif kind == "at" and str(data.get("qq")) == me:
            mentioned = True
    text = "".join(parts).strip()
    return text or None, mentioned


def text_message(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "data": {"text": text}}]


def record_message(silk: bytes) -> list[dict[str, Any]]:
    """A voice note as a `record` segment (message/segment.md), its bytes inline (`base64://`,
    which NapCat, Lagrange and LLOneBot all read, wherever they run)."""
    return [{"type": "record", "data": {"file": "base64://" + base64.b64encode(silk).decode()}}]


def failure(answer: dict[str, Any], action: str) -> ChannelError:
    """A "failed" answer as the outbox understands it, its retcode and words in the line."""
    code = answer.get("retcode")
    words = answer.get("message") or answer.get("wording") or answer.get("msg") or "no reason"
    reason = f"qq {action}: retcode {code}: {words}"
    if code in NEVER_HEALS:
        return ChannelError(reason, permanent=True)
    return ChannelError(reason, tries=UNEXPLAINED_TRIES)


class Link:
    """One forward-WebSocket connection: API calls matched to their answers by `echo`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, timeout_s: float) -> None:
        self.ws, self.timeout_s = ws, timeout_s
        self._echo = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._lost: str | None = None

    async def call(self, action: str, params: dict[str, Any]) -> Any:
        """The answer's `data`; ChannelError for a refusal, a lost connection or no answer
        within the timeout (the call may still have been carried out)."""
        if self._lost is not None:
            raise ChannelError(f"qq {action}: the connection was lost ({self._lost})")
        echo = f"msgvoice-{next(self._echo)}"
        waiting = asyncio.get_running_loop().create_future()
        self._waiting[echo] = waiting
        try:
            await self.ws.send_str(json.dumps({"action": action, "params": params, "echo": echo}))
            async with asyncio.timeout(self.timeout_s):
                answer = await waiting
        except TimeoutError as exc:
            raise ChannelError(f"qq {action}: no answer within {self.timeout_s:.0f}s") from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise ChannelError(f"qq {action}: the connection failed: {exc}") from exc
        finally:
            self._waiting.pop(echo, None)
        if answer.get("status") in ("ok", "async") or answer.get("retcode") in (0, 1):
            return answer.get("data")
        raise failure(answer, action)

    def answered(self, frame: dict[str, Any]) -> bool:
        """Hand an answer to its call; False when `frame` answers none of ours."""
        waiting = self._waiting.get(str(frame.get("echo")))
        if waiting is None:
            return False
        if not waiting.done():
            waiting.set_result(frame)
        return True

    def lost(self, why: str) -> None:
        """The connection is gone: every call still waiting fails (to be tried again), and
        so does every later one."""
        self._lost = why
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(ChannelError(f"qq: the connection was lost ({why})"))
        self._waiting.clear()


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def refused_token(frame: dict[str, Any]) -> bool:
    """NapCat's answer to a wrong token: a "failed" 1403 that answers no call, then a close."""
    return frame.get("status") == "failed" and frame.get("retcode") in REFUSED_TOKEN


@contextlib.asynccontextmanager
async def connected(
    session: aiohttp.ClientSession, url: str, token: str
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """The forward WebSocket, pinged every 30 s (a peer that stops answering is dropped); a
    handshake refused with 401/403 is LoginRefused."""
    try:
        async with session.ws_connect(
            url,
            headers=auth_headers(token),
            heartbeat=30.0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            max_msg_size=64 * 1024 * 1024,
        ) as ws:
            yield ws
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status in (401, 403):
            raise LoginRefused(f"it refused the access token ({exc.status})") from exc
        raise


async def route(
    ws: aiohttp.ClientWebSocketResponse,
    link: Link,
    on_event: Callable[[dict[str, Any]], None],
    quiet_s: Callable[[], float | None] = lambda: None,
) -> str:
    """Read the connection until it ends (or stays quiet longer than `quiet_s()`): answers
    to their calls, events to `on_event`; returns why it ended. A refused token is
    LoginRefused; a frame that is not JSON is passed over with a line."""
    try:
        while True:
            try:
                message = await ws.receive(timeout=quiet_s())
            except TimeoutError:
                return f"nothing heard for {quiet_s():.0f}s (its heartbeat stopped)"
            if message.type in _ENDED:
                return f"closed ({ws.close_code or message.extra or 'no close frame'})"
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            try:
                frame = json.loads(message.data)
            except ValueError:
                log.warning(
                    "qq: a frame that is not JSON was passed over (%d bytes)", len(message.data)
                )
                continue
            if not isinstance(frame, dict) or link.answered(frame):
                continue
            if frame.get("post_type"):
                on_event(frame)
            elif refused_token(frame):
                raise LoginRefused("it refused the access token (retcode 1403)")
    finally:
        link.lost("closed")


async def whoami(url: str, token: str, timeout_s: float) -> tuple[dict[str, Any], str]:
    """The bot's account (get_login_info) and the implementation's name and version
    (get_version_info), asked on a connection of their own."""
    async with (
        aiohttp.ClientSession() as session,
        asyncio.timeout(timeout_s),
        connected(session, url, token) as ws,
    ):
        link = Link(ws, timeout_s)
        reader = asyncio.create_task(route(ws, link, lambda event: None))
        try:
            me, version = await asyncio.gather(
                link.call("get_login_info", {}), link.call("get_version_info", {})
            )
        except ChannelError:
            refused = reader.exception() if reader.done() else None
            if isinstance(refused, LoginRefused):
                raise refused from None
            raise
        finally:
            reader.cancel()
    version = version if isinstance(version, dict) else {}
    name = f"{version.get('app_name', 'OneBot')} {version.get('app_version', '')}"
    return (me if isinstance(me, dict) else {}), name.strip()
