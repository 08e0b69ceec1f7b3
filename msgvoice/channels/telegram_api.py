"""The Bot API as msgvoice calls it: one method call over httpx, its errors classified, chat
addresses, and text cut to the message limit.

Errors as the Bot API reports them (`{"ok": false, "error_code", "description",
"parameters"}`, core.telegram.org/bots/api#making-requests and #responseparameters):
429 waits out `parameters.retry_after`; 5xx and network errors back off; a 400 carrying
`parameters.migrate_to_chat_id` is a group that became a supergroup (python-telegram-bot's
ChatMigrated); `VOICE_MESSAGES_FORBIDDEN` is a user whose privacy settings refuse voice
messages; other 400s and 403 (chat not found, bot blocked or kicked) refuse that item for good;
401 (and 404, a token the server does not know) is a token the server refuses; 409 is a webhook
or another getUpdates poller.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

import httpx

from msgvoice.channels.outbox import ChannelError

PREFIX = "tg:"
MAX_TEXT_UNITS = 4096
"""sendMessage's limit in UTF-16 code units (python-telegram-bot: MessageLimit.MAX_TEXT_LENGTH)."""
_ENDS = re.compile(r"(?<=[\n。！？!?.…])")
# fmt: off
CONTENT = frozenset((
    "text", "caption", "photo", "document", "audio", "voice", "video", "video_note", "sticker",
    "animation", "contact", "location", "venue", "poll", "dice", "story",
))
# fmt: on
"""Message fields a person sends (Bot API `Message`); a message with none is a service message."""
GROUPS = ("group", "supergroup")


class Unauthorized(ChannelError):
    """The server does not know the token (401, or 404 for the whole bot URL)."""


class Conflict(ChannelError):
    """409: a webhook is set, or another getUpdates poller runs."""


class ChatMigrated(ChannelError):
    """The group was upgraded to a supergroup, which has a new id."""

    def __init__(self, why: str, new_id: int) -> None:
        super().__init__(why, permanent=True)
        self.new_id = new_id


class VoiceForbidden(ChannelError):
    """The user's privacy settings refuse voice messages (Telegram Premium)."""


def address(chat_id: str) -> dict[str, Any]:
    """Bot API parameters for a journalled chat id (`tg:<chat>` or `tg:<chat>#<thread>`)."""
    chat, _, thread = chat_id[len(PREFIX) :].partition("#")
    return {"chat_id": chat} | ({"message_thread_id": thread} if thread else {})


def migration(chat_id: str, message: dict[str, Any]) -> tuple[str, str] | None:
    """(old, new) chat ids when `message` tells of a group upgraded to a supergroup: the old
    group gets `migrate_to_chat_id`, the new supergroup `migrate_from_chat_id`."""
    if "migrate_to_chat_id" in message:
        return chat_id, f"{PREFIX}{message['migrate_to_chat_id']}"
    if "migrate_from_chat_id" in message:
        return f"{PREFIX}{message['migrate_from_chat_id']}", chat_id
    return None


def units(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts it (an emoji is two)."""
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_TEXT_UNITS) -> list[str]:
    """The text in messages of at most `limit` units, cut at line or sentence ends (mid-
    sentence only for a sentence longer than a message), numbered `(1/3)` when more than one."""
    if units(text) <= limit:
        return [text]
    room = limit - len("(99/99) ")
    pieces: list[str] = []
    for sentence in filter(None, _ENDS.split(text)):
        rest = sentence
        while units(rest) > room:  # one sentence longer than a message: cut by characters
            cut = room
            while units(rest[:cut]) > room:
                cut -= 1
            pieces.append(rest[:cut])
            rest = rest[cut:]
        if pieces and units(pieces[-1]) + units(rest) <= room:
            pieces[-1] += rest
        else:
            pieces.append(rest)
    parts = [p.strip() for p in pieces if p.strip()]
    return [f"({n}/{len(parts)}) {p}" for n, p in enumerate(parts, 1)]


class BotApi:
    """One bot's methods over a shared httpx client."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, token: str) -> None:
        self.client = client
        self.url = f"{base_url.rstrip('/')}/bot{token}"

    async def call(
        self,
        method: str,
        files: dict[str, Any] | None = None,
        timeout_s: float = 30.0,
        **params: Any,
    ) -> Any:
        """One Bot API call; its result, or the error classified (see the module doc)."""
        url = f"{self.url}/{method}"
        try:
            if files:
                response = await self.client.post(url, data=params, files=files, timeout=timeout_s)
            else:
                response = await self.client.post(url, json=params, timeout=timeout_s)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChannelError(f"{method}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(body, dict):
            raise ChannelError(f"{method}: HTTP {response.status_code}, not a Bot API answer")
        if body.get("ok"):
            return body.get("result")
        _raise(method, body, response.status_code)


def _raise(method: str, body: dict[str, Any], status: int) -> NoReturn:
    code = body.get("error_code", status)
    description = str(body.get("description", ""))
    why = f"{method}: {code} {description}".strip()
    parameters = body.get("parameters") or {}
    if code == 429:
        retry = parameters.get("retry_after")
        raise ChannelError(why, float(retry) if isinstance(retry, int | float) else None)
    if code in (401, 404):
        raise Unauthorized(why, permanent=True)
    if code == 409:
        raise Conflict(why)
    if isinstance(moved := parameters.get("migrate_to_chat_id"), int):
        raise ChatMigrated(why, moved)
    if "VOICE_MESSAGES_FORBIDDEN" in description:
        raise VoiceForbidden(why, permanent=True)
    raise ChannelError(why, permanent=code in (400, 403))
