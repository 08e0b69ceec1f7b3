"""Telegram at its edges, against the loopback Bot API (tests/fake_telegram.py, which cites the
upstream text for each answer): a group upgraded to a supergroup, texts over a message's limit,
users who forbid voice messages, parts retried after a 429, service messages, /start, captions,
anonymous admins and automatic forwards."""

from __future__ import annotations

import io
from pathlib import Path

import soundfile as sf

from msgvoice.channels.telegram_api import MAX_TEXT_UNITS, split_text, units
from tests.conftest import until
from tests.daemon_util import running
from tests.fake_telegram import FakeTelegram
from tests.test_channels import tg_env, tg_settled

OLD, NEW = -4000, -1001557912345


def test_long_texts_are_cut_at_sentence_ends_within_the_limit() -> None:
    """10,000 characters become numbered parts, each within 4,096 UTF-16 units (an emoji is
    two), cut after a sentence; nothing is lost; a short text is left as it is."""
    text = "".join(f"第{n}句话说完了😀。" for n in range(1000))
    parts = split_text(text)
    assert len(parts) == 3 and all(units(p) <= MAX_TEXT_UNITS for p in parts)
    assert [p.split(" ", 1)[0] for p in parts] == ["(1/3)", "(2/3)", "(3/3)"]
    assert "".join(p.split(" ", 1)[1] for p in parts) == text
    assert all(p.endswith("。") for p in parts)
    assert split_text("晚安") == ["晚安"]
    one_sentence = "好" * 9000  # no sentence end at all: cut by characters
    assert "".join(p.split(" ", 1)[1] for p in split_text(one_sentence)) == one_sentence


async def test_a_group_upgraded_to_a_supergroup_keeps_its_voice_and_settings(
    clean_env: Path,
) -> None:
    """The group sets a style and asks for a voice note, then becomes a supergroup before it
    is sent: the note arrives at the new id (after one 400 with migrate_to_chat_id), the style
    follows the chat, and the next /tts in the supergroup is answered there."""
    async with FakeTelegram() as bot, running(clean_env, **tg_env(bot)) as (daemon, _):
        bot.text(OLD, "/mode style 温柔")
        await until(lambda: bot.sent_by("sendMessage"))
        bot.migrated[str(OLD)] = NEW  # upgraded; Telegram's service messages come later
        bot.text(OLD, "/tts 你好")
        await until(lambda: bot.sent_by("sendVoice"))
        bot.migrate(OLD, NEW)
        bot.text(NEW, "/mode")
        await until(lambda: len(bot.sent_by("sendMessage")) == 2)
        await tg_settled(daemon, bot)
        assert daemon.journal.chat(f"tg:{NEW}").style == "温柔"
    assert [v["chat_id"] for v in bot.sent_by("sendVoice")] == [str(NEW)]
    assert bot.calls.count("sendVoice") == 2  # one 400 with migrate_to_chat_id, then the new id
    shown = bot.sent_by("sendMessage")[-1]
    assert shown["chat_id"] == str(NEW) and "温柔" in shown["text"]


async def test_a_ten_thousand_character_reply_arrives_whole_in_parts(clean_env: Path) -> None:
    """A bot reply over sendMessage's limit goes in numbered parts, in order, all of it."""
    text = "".join(f"第{n}句话。" for n in range(1600))
    async with FakeTelegram() as bot, running(clean_env, **tg_env(bot)) as (daemon, client):
        answer = await client.post("/v1/chats/tg:77/replies", json={"text": text})
        assert answer.status_code == 202
        await until(lambda: len(bot.sent_by("sendMessage")) >= 3)
        await until(lambda: not daemon.router.pending("tg:"))
    sent = [m["text"] for m in bot.sent_by("sendMessage")]
    assert "".join(m.split(" ", 1)[1] for m in sent) == text
    assert sent[0].startswith("(1/") and all(units(m) <= MAX_TEXT_UNITS for m in sent)


async def test_a_user_who_forbids_voice_messages_gets_the_audio_as_a_file(
    clean_env: Path,
) -> None:
    """VOICE_MESSAGES_FORBIDDEN: the voice note arrives as an OGG document instead, and the
    chat's next one goes as a file at once (remembered, no second refusal)."""
    async with FakeTelegram(no_voice={"55"}) as bot, running(clean_env, **tg_env(bot)) as (d, _):
        bot.text(55, "/tts 你好")
        await until(lambda: bot.sent_by("sendDocument"))
        bot.text(55, "/tts 晚安")
        await until(lambda: len(bot.sent_by("sendDocument")) == 2)
        await tg_settled(d, bot)
    documents = bot.sent_by("sendDocument")
    assert [x["chat_id"] for x in documents] == ["55", "55"]
    info = sf.info(io.BytesIO(documents[0]["document_bytes"]))
    assert (info.format, info.subtype) == ("OGG", "OPUS") and info.duration > 0.2
    assert bot.calls.count("sendVoice") == 1 and bot.sent_by("sendVoice") == []


async def test_no_voice_and_no_files_gets_the_words(clean_env: Path) -> None:
    """Voice messages forbidden and documents refused too: the chat gets the text it asked
    to hear, rather than nothing."""
    async with (
        FakeTelegram(no_voice={"56"}, no_files={"56"}) as bot,
        running(clean_env, **tg_env(bot)) as (daemon, _),
    ):
        bot.text(56, "/tts 晚安，明天见")
        await until(lambda: bot.sent_by("sendMessage"))
        await tg_settled(daemon, bot)
    assert [m["text"] for m in bot.sent_by("sendMessage")] == ["晚安，明天见"]
    assert bot.calls.count("sendDocument") == 1


async def test_a_429_at_part_two_does_not_resend_part_one(clean_env: Path) -> None:
    """A reply in three parts meets a 429 on its second: the retry sends parts 2 and 3, each
    exactly once (the parts of a long voice note go through the same path)."""
    text = "".join(f"第{n}句话。" for n in range(1600))
    async with (
        FakeTelegram(scripted={"sendMessage": {2: 429}}) as bot,
        running(clean_env, **tg_env(bot)) as (daemon, client),
    ):
        await client.post("/v1/chats/tg:31/replies", json={"text": text})
        await until(lambda: len(bot.sent_by("sendMessage")) >= 3)
        await until(lambda: not daemon.router.pending("tg:"))
    heads = [m["text"].split(" ", 1)[0] for m in bot.sent_by("sendMessage")]
    assert heads == ["(1/3)", "(2/3)", "(3/3)"] and len(bot.failed_at["sendMessage"]) == 1


async def test_service_messages_forwards_and_other_bots_get_nothing(clean_env: Path) -> None:
    """Joins, pins, a new topic and a channel post forwarded into its discussion group get no
    answer; a photo in a group neither; /start gets the greeting and the help; a /tts in a
    photo's caption is spoken; an anonymous admin (sender_chat) is answered."""
    async with FakeTelegram() as bot, running(clean_env, **tg_env(bot)) as (daemon, _):
        bot.service(-9, new_chat_members=[{"id": 8, "is_bot": False, "first_name": "N"}])
        bot.service(-9, pinned_message={"message_id": 1, "date": 0, "chat": {"id": -9}})
        bot.service(-9, forum_topic_created={"name": "t", "icon_color": 7322096})
        bot.text(-9, "/tts 频道的帖子", is_automatic_forward=True)
        bot.text(-9, "/frobnicate")  # another bot's command
        bot.text(-9, None, photo=[{"file_id": "p", "width": 1, "height": 1}])
        bot.text(6, "/start")
        bot.text(
            6, None, caption="/tts 图片说明", photo=[{"file_id": "p", "width": 1, "height": 1}]
        )
        anonymous = {"id": 1087968824, "is_bot": True, "first_name": "Group"}
        bot.text(-9, "/help", **{"from": anonymous, "sender_chat": {"id": -9, "type": "group"}})
        await until(lambda: bot.sent_by("sendVoice") and len(bot.sent_by("sendMessage")) >= 2)
        await tg_settled(daemon, bot)
    texts = sorted((m["chat_id"], m["text"].splitlines()[0]) for m in bot.sent_by("sendMessage"))
    assert texts == [("-9", "/tts 文本 — 把文本读成语音"), ("6", "你好！我会把文字读成语音消息。")]
    assert [v["chat_id"] for v in bot.sent_by("sendVoice")] == ["6"]
