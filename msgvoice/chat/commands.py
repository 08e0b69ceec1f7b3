"""Chat command parsing (pure): `/tts`, `/mode`, `/help`, unknown commands, plain text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from msgvoice.speech.text import speakable

STYLE_CLEAR_WORDS = ("off", "reset", "clear")
STYLE_HEAD_MAX = 20
STYLE_MAX_CHARS = 200
"""Longest `/mode style` description (a style hint, not a text to speak)."""

_COLON = re.compile(r"[:：]")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")
_DIGITS = re.compile(r"^[\d\s]+$")


@dataclass(frozen=True)
class Speak:
    """`/tts [style：]text`: speak text, with a one-off style hint when given."""

    text: str
    style: str | None = None


@dataclass(frozen=True)
class ShowMode:
    """`/mode`: show the chat's voice mode, style and engine."""


@dataclass(frozen=True)
class SetVoiceMode:
    """`/mode voice <mode>`: when bot replies are voiced (normalised to both/text/audio)."""

    mode: Literal["both", "text", "audio"]


@dataclass(frozen=True)
class SetStyle:
    """`/mode style <desc>`; style None clears it."""

    style: str | None


@dataclass(frozen=True)
class SetSpeaker:
    """`/mode speaker <name>`: the chat's voice by name (a clip in the voices folder, or an
    eSpeak voice); None (`/mode speaker off`) returns to the configured voice."""

    speaker: str | None


@dataclass(frozen=True)
class Help:
    """`/help`, or `/start` (the same, after a greeting)."""

    greet: bool = False


@dataclass(frozen=True)
class Usage:
    """A known command used wrongly; `key` names the reply (see replies.py)."""

    key: str


@dataclass(frozen=True)
class Unknown:
    """An unknown `/command`."""

    name: str


@dataclass(frozen=True)
class PlainText:
    """Not a command: an ordinary chat message."""

    text: str


Command = (
    Speak | ShowMode | SetVoiceMode | SetStyle | SetSpeaker | Help | Usage | Unknown | PlainText
)


def split_style(body: str) -> tuple[str | None, str]:
    """Split `风格：文本` into (style, text) by the style-prefix rule; (None, body) otherwise.

    The head before the first ASCII or full-width colon is a style when it is 1-20 characters,
    is not only digits (`10:30开会`) and is not a URL scheme (`http://...`).
    """
    match = _COLON.search(body)
    if match is None:
        return None, body
    head, rest = body[: match.start()].strip(), body[match.end() :]
    if not head or len(head) > STYLE_HEAD_MAX or _DIGITS.match(head):
        return None, body
    if match.group() == ":" and rest.startswith("//") and _URL_SCHEME.match(head):
        return None, body
    return head, rest.strip()


def _parse_tts(body: str) -> Command:
    style, text = split_style(body)
    if not text:
        return Usage("tts_usage")
    if not speakable(text):  # only emoji, punctuation or invisible characters
        return Usage("nothing_to_speak")
    return Speak(text=text, style=style)


_VOICE_MODE: dict[str, Literal["both", "text", "audio"]] = {  # `/mode voice` words
    "on": "both",
    "off": "text",
    "both": "both",
    "audio": "audio",
    "text": "text",
}


def _parse_voice(arg: str) -> Command:
    mode = _VOICE_MODE.get(arg.lower())
    return Usage("mode_usage") if mode is None else SetVoiceMode(mode)


def _parse_style(arg: str) -> Command:
    if len(arg) > STYLE_MAX_CHARS:
        return Usage("style_too_long")
    return SetStyle(None if arg.lower() in STYLE_CLEAR_WORDS else arg)


def _parse_mode(body: str) -> Command:
    if not body:
        return ShowMode()
    word, arg = [*body.split(maxsplit=1), ""][:2]
    word, arg = word.lower(), arg.strip()
    if word == "voice":
        return _parse_voice(arg)
    if word == "style-reset" and not arg:
        return SetStyle(None)
    if word == "style" and arg:
        return _parse_style(arg)
    if word == "speaker" and arg:
        return SetSpeaker(None if arg.lower() in STYLE_CLEAR_WORDS else arg)
    return Usage("mode_usage")


def parse(line: str) -> Command:
    """Parse one chat line into a command."""
    text = line.strip()
    if not text.startswith("/"):
        return PlainText(text)
    head, body = [*text[1:].split(maxsplit=1), "", ""][:2]
    # Telegram appends the bot's name to commands in groups: /tts@my_bot
    name = head.lower().partition("@")[0]
    body = body.strip()
    if name in ("help", "start"):  # /start: what Telegram sends when a chat opens the bot
        return Help(greet=name == "start")
    handler = {"tts": _parse_tts, "mode": _parse_mode}.get(name)
    return handler(body) if handler else Unknown(name)
