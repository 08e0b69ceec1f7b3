"""The responder's answers are journalled work off the intake path: a slow model in one chat
holds no other chat, and a restart mid-answer loses nothing."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import until
from tests.daemon_util import running
from tests.fake_llm import FakeLLM, Reply
from tests.fake_telegram import FakeTelegram
from tests.test_channels import tg_env, tg_settled


def responder(llm: FakeLLM) -> dict[str, str]:
    return {"MSGVOICE_RESPONDER_BASE_URL": llm.url, "MSGVOICE_RESPONDER_MODEL": "chat"}


async def test_a_slow_answer_in_one_chat_does_not_hold_a_tts_in_another(clean_env: Path) -> None:
    """Telegram takes updates in one at a time: chat 1's question waits 3 s on the model, and
    chat 2's `/tts`, sent after it, is spoken and delivered before that answer arrives."""
    async with (
        FakeLLM([Reply("慢慢想好了。", delay_s=3)]) as llm,
        FakeTelegram() as bot,
        running(clean_env, **responder(llm), **tg_env(bot)) as (daemon, _),
    ):
        bot.text(1, "你觉得呢？")
        bot.text(2, "/tts 你好")
        await until(lambda: bot.sent_by("sendMessage"), within=30)
        await tg_settled(daemon, bot)
    order = [(s["method"], s["chat_id"]) for s in bot.sent if s["method"] != "sendChatAction"]
    assert order == [("sendVoice", "2"), ("sendMessage", "1")]


async def test_a_restart_mid_answer_asks_again(clean_env: Path) -> None:
    """The daemon stops while the model is still answering: the next daemon asks again and
    the chat gets its answer."""
    async with FakeLLM([Reply(hang=True), Reply("想好了。")]) as llm:
        async with running(clean_env, **responder(llm)) as (_, client):
            await client.post("/v1/messages", json={"chat_id": "c", "text": "在吗？"})
            await until(lambda: llm.requests)
        async with running(clean_env, **responder(llm)) as (_, client):
            items = (await client.get("/v1/chats/c/outbox?wait=30")).json()["items"]
    assert [i["text"] for i in items] == ["想好了。"]
    assert [r["messages"][-1]["content"] for r in llm.requests] == ["在吗？", "在吗？"]
