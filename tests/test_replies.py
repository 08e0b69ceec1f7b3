"""Replies follow the chat's language: Chinese by default, English for chats that write English."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from msgvoice.chat import phrasebook
from tests.daemon_util import running


@pytest.mark.parametrize(
    ("said", "lang"),
    [
        ("温柔一点", "zh"),
        ("gentle please", "en"),
        ("用 gentle 的语气", "zh"),
        ("123 !!", None),
        ("😊", None),
    ],
)
def test_detect(said: str, lang: str | None) -> None:
    """Chinese characters mean zh; Latin words en; nothing to go on, None."""
    assert phrasebook.detect(said) == lang


def test_every_reply_exists_in_both_languages() -> None:
    """No reply is missing a translation; an unknown language falls back to Chinese."""
    assert set(phrasebook.TEXTS["zh"]) == set(phrasebook.TEXTS["en"])
    assert phrasebook.text("style_cleared", "fr") == phrasebook.text("style_cleared", "zh")


async def test_chat_that_writes_english_gets_english_replies(clean_env: Path) -> None:
    """Chinese by default; after an English style description, replies are English, and that
    survives a restart; writing Chinese again switches back."""

    async def say(client: httpx.AsyncClient, line: str) -> list[str]:
        answer = await client.post("/v1/messages", json={"chat_id": "lang", "text": line})
        replies_: list[str] = answer.json()["replies"]
        return replies_

    async with running(clean_env) as (_, client):
        assert await say(client, "/mode voice on") == ["已设置语音模式：文字+语音"]
        assert await say(client, "/mode style soft and calm") == ["Style set: soft and calm"]
        assert (await say(client, "/help"))[0].startswith("/tts text — speak the text")
        assert await say(client, "/tts") == [phrasebook.text("tts_usage", "en")]
        assert await say(client, "/nope") == ["Unknown command /nope; send /help for the commands"]
    async with running(clean_env) as (_, client):
        shown = (await say(client, "/mode"))[0]
        assert shown == "Voice mode: text + voice; style: soft and calm; engine: espeak"
        assert await say(client, "/mode style 温柔") == ["已设置风格：温柔"]
        assert (await say(client, "/mode"))[0].startswith("语音模式")


async def test_tts_text_and_voice_names_do_not_change_the_language(clean_env: Path) -> None:
    """Speaking English text or picking the voice `en` keeps a Chinese chat Chinese."""
    async with running(clean_env) as (_, client):
        for line in ("/tts hello world", "/mode speaker en"):
            await client.post("/v1/messages", json={"chat_id": "zh", "text": line})
        shown = await client.post("/v1/messages", json={"chat_id": "zh", "text": "/mode"})
    assert shown.json()["replies"][0].startswith("语音模式")
