"""The QQ channel against a loopback OneBot v11 implementation (tests/fake_onebot.py: the
forward WebSocket as the OneBot spec and NapCat's source describe it), with msgvoice's daemon
running as users run it."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import httpx
import numpy as np
import pysilk
import pytest
import soundfile as sf

from msgvoice.config import load
from msgvoice.ops.apps import check_qq
from msgvoice.speech.convert import silk_notes
from tests.conftest import until
from tests.daemon_util import running
from tests.fake_onebot import BOT, TOKEN, FakeOneBot

ALICE, BOB, CAROL = 10001, 10002, 10003
ROOM, OTHER_ROOM, LEFT_ROOM = 20001, 20002, 20009


def qq_env(fake: FakeOneBot, **more: str) -> dict[str, str]:
    return {
        "MSGVOICE_QQ_ENABLED": "true",
        "MSGVOICE_QQ_URL": fake.url,
        "MSGVOICE_QQ_ACCESS_TOKEN": TOKEN,
        **more,
    }


def silk_seconds(data: bytes) -> float:
    """A SILK voice note decoded, as QQ plays it: its length in seconds."""
    pcm = io.BytesIO()
    pysilk.decode(io.BytesIO(data), pcm, 24_000)
    return len(pcm.getvalue()) / 2 / 24_000


async def connected(fake: FakeOneBot, connections: int = 1) -> None:
    """Connected `connections` times, and the account known (get_login_info answered)."""
    logins = lambda: sum(c["action"] == "get_login_info" for c in fake.calls)  # noqa: E731
    await until(lambda: fake.connections >= connections and logins() >= connections)


async def outbox(client: httpx.AsyncClient, chat: str) -> list[dict[str, str]]:
    items: list[dict[str, str]] = (await client.get(f"/v1/chats/{chat}/outbox")).json()["items"]
    return items


@pytest.mark.parametrize("message_format", ["array", "string"])
async def test_tts_comes_back_as_a_silk_voice_note_in_private_and_in_a_group(
    clean_env: Path, message_format: str
) -> None:
    """`/tts 温柔：晚安` in a private chat and, @-mentioning the bot, in a group (events in
    OneBot's array format, and in its CQ-string one) → one `record` segment each, sent with
    send_private_msg / send_group_msg: SILK v3 with Tencent's header, whose decoded length is
    the voice note's."""
    async with (
        FakeOneBot(message_format=message_format) as fake,
        running(clean_env, **qq_env(fake)) as (_, client),
    ):
        await connected(fake)
        fake.say(ALICE, "/tts 温柔：晚安")
        fake.say(BOB, "/tts 温柔：晚安", group=ROOM, at_bot=True)
        await until(lambda: fake.records(f"user:{ALICE}") and fake.records(f"group:{ROOM}"))
        (item,) = await outbox(client, f"qq:user:{ALICE}")
        original = (await client.get(item["audio_url"])).content
    assert sorted(m["action"] for m in fake.sent) == ["send_group_msg", "send_private_msg"]
    for chat in (f"user:{ALICE}", f"group:{ROOM}"):
        (note,) = fake.records(chat)
        assert note.startswith(b"\x02#!SILK_V3")
        assert silk_seconds(note) > 0.3
    samples, rate = sf.read(io.BytesIO(original))
    assert abs(silk_seconds(fake.records(f"user:{ALICE}")[0]) - len(samples) / rate) < 0.05


async def test_mode_round_trips_and_voice_on_makes_bot_replies_voice_notes(
    clean_env: Path,
) -> None:
    """`/mode style 撒娇` and `/mode voice on` are answered in text; the bot's ordinary reply
    to that chat (through the HTTP API, as a bot framework posts it) then comes as text and a
    voice note, and `/mode` shows the settings."""
    async with FakeOneBot() as fake, running(clean_env, **qq_env(fake)) as (_, client):
        await connected(fake)
        chat = f"user:{ALICE}"
        fake.say(ALICE, "/mode style 撒娇")
        await until(lambda: len(fake.texts(chat)) == 1)
        fake.say(ALICE, "/mode voice on")
        await until(lambda: len(fake.texts(chat)) == 2)
        answer = await client.post(f"/v1/chats/qq:{chat}/replies", json={"text": "好的呀"})
        assert answer.status_code < 300, answer.text
        await until(lambda: fake.records(chat))
        fake.say(ALICE, "/mode")
        await until(lambda: len(fake.texts(chat)) == 4)
    texts = fake.texts(chat)
    assert "撒娇" in texts[0] and "语音" in texts[1] and texts[2] == "好的呀"
    assert "撒娇" in texts[3]


async def test_a_group_talking_among_itself_is_not_answered(clean_env: Path) -> None:
    """In a group, plain talk and other bots' commands are left alone; a `/tts` without the
    @ is ours, and so is plain text that @-mentions the bot (in the CQ-string format too)."""
    async with (
        FakeOneBot(message_format="string") as fake,
        running(clean_env, **qq_env(fake)),
    ):
        await connected(fake)
        fake.say(BOB, "大家晚上好", group=ROOM)
        fake.say(BOB, "/weather 北京", group=ROOM)
        fake.say(BOB, "[不是CQ码] 你好", group=ROOM)
        fake.say(CAROL, "/tts 一", group=ROOM)
        await until(lambda: fake.records(f"group:{ROOM}"))
        fake.say(CAROL, "/help", group=OTHER_ROOM, at_bot=True)
        await until(lambda: fake.texts(f"group:{OTHER_ROOM}"))
    assert len(fake.sent) == 2


async def test_a_group_the_bot_left_fails_its_item_while_another_chat_is_served(
    clean_env: Path,
) -> None:
    """NapCat's catch-all 1200 ("发送消息失败") for a group the account is not in: the item
    is tried a few times, then marked failed with the retcode and words; a private chat's
    voice note asked meanwhile is delivered."""
    async with FakeOneBot() as fake, running(clean_env, **qq_env(fake)) as (_, client):
        await connected(fake)
        fake.say(BOB, "/tts 你好", group=LEFT_ROOM, at_bot=True)
        await until(lambda: any(c["action"] == "send_group_msg" for c in fake.calls))
        fake.say(ALICE, "/tts 晚安")
        await until(lambda: fake.records(f"user:{ALICE}"))
        items = await _settled(client, f"qq:group:{LEFT_ROOM}")
    assert [i["state"] for i in items] == ["failed"]
    assert "retcode 1200" in items[0]["error"] and "发送消息失败" in items[0]["error"]
    tries = [c for c in fake.calls if c["params"].get("group_id") == LEFT_ROOM]
    assert len(tries) == 3


async def _settled(client: httpx.AsyncClient, chat: str) -> list[dict[str, str]]:
    async def final() -> bool:
        items = await outbox(client, chat)
        return bool(items) and all(i["state"] != "pending" for i in items)

    await until(final, within=30)
    return await outbox(client, chat)


async def test_a_dropped_connection_reconnects_and_answers_each_message_once(
    clean_env: Path,
) -> None:
    """The connection dies without a close frame: the channel connects again, a message
    answered before is not answered again, and one sent after is answered once."""
    async with FakeOneBot() as fake, running(clean_env, **qq_env(fake)):
        await connected(fake)
        fake.say(ALICE, "/help")
        await until(lambda: fake.texts(f"user:{ALICE}"))
        await fake.drop()
        await connected(fake, 2)
        fake.say(ALICE, "/tts 又见面了")
        await until(lambda: fake.records(f"user:{ALICE}"))
    assert len(fake.sent) == 2 and fake.connections == 2


async def test_a_heartbeat_that_stops_means_reconnect(clean_env: Path) -> None:
    """The implementation hangs with the socket open (no heartbeat, no answers): once two
    heartbeat intervals pass in silence, the channel drops it and connects again."""
    async with FakeOneBot(heartbeat_ms=200) as fake, running(clean_env, **qq_env(fake)):
        await connected(fake)
        await until(lambda: fake.heartbeats >= 2)  # the channel knows the interval
        fake.hang()
        await connected(fake, 2)
        fake.say(ALICE, "/help")
        await until(lambda: fake.texts(f"user:{ALICE}"))


async def test_frames_that_make_no_sense_are_passed_over_alone(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Text that is not JSON, a JSON array, a message event whose fields are the wrong kinds,
    a heartbeat with a nonsense interval and an answer to no call: each is passed over; the
    connection stays (no reconnect) and the next command is answered once."""
    async with FakeOneBot() as fake, running(clean_env, **qq_env(fake)):
        await connected(fake)
        fake.push_raw("not json {")
        fake.push_raw("[1, 2]")
        fake.push({"post_type": "message", "message_type": "private", "user_id": {"x": 1}})
        fake.push(
            {"post_type": "message", "message_type": "private", "user_id": 1, "message_id": {}}
        )
        fake.push({"post_type": "message", "message_type": "group", "group_id": 5, "message": 7})
        fake.push({"post_type": "meta_event", "meta_event_type": "heartbeat", "interval": "x"})
        fake.push_raw('{"status": "ok", "retcode": 0, "data": null, "echo": "nobody"}')
        fake.say(ALICE, "/help")
        await until(lambda: fake.texts(f"user:{ALICE}"))
    assert fake.connections == 1 and len(fake.sent) == 1
    assert not [r for r in caplog.records if r.exc_info], "no traceback"


async def test_a_refused_token_stops_the_channel_with_one_line(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """NapCat answers a wrong token with retcode 1403 and closes: the channel stops with one
    line that names the setting to fix, and does not hammer the implementation; the daemon
    and its HTTP API go on."""
    caplog.set_level(logging.ERROR)
    async with (
        FakeOneBot() as fake,
        running(clean_env, **qq_env(fake, MSGVOICE_QQ_ACCESS_TOKEN="wrong")) as (_, client),
    ):
        await until(lambda: "qq channel stopped" in caplog.text)
        assert (await client.get("/healthz")).status_code == 200
    assert fake.refused == 1 and fake.connections == 0
    (line,) = [r for r in caplog.records if "qq channel stopped" in r.getMessage()]
    assert "qq.access_token" in line.getMessage() and not line.exc_info


async def test_doctor_names_the_account_and_a_refused_token(clean_env: Path) -> None:
    """doctor connects as the channel would: the QQ account and the implementation when the
    token is right; an error with its fix when it is wrong; a warning when the answers are
    not objects, and when nothing listens."""
    async with FakeOneBot() as fake:
        env = {"MSGVOICE_STATE_DIR": str(clean_env), **qq_env(fake)}
        good = await check_qq(load(None, env))
        bad = await check_qq(load(None, {**env, "MSGVOICE_QQ_ACCESS_TOKEN": "wrong"}))
        fake._do_get_login_info = lambda params: ["not", "an", "object"]  # type: ignore[method-assign, assignment, return-value]
        fake._do_get_version_info = lambda params: 42  # type: ignore[method-assign, assignment, return-value]
        odd = await check_qq(load(None, env))
    gone = await check_qq(load(None, env))
    assert good is not None and good.status == "pass"
    assert str(BOT) in good.message and "NapCat" in good.message
    assert bad is not None and bad.status == "error" and "qq.access_token" in (bad.fix or "")
    assert gone is not None and gone.status == "warning" and "qq.url" in (gone.fix or "")
    assert odd is not None and odd.status == "warning" and "not logged in" in odd.message


def test_a_long_voice_note_goes_in_parts_of_at_most_a_minute(tmp_path: Path) -> None:
    """130 s of audio → three SILK notes, each at most 60 s, together as long as the audio,
    cut where it is quiet (a tone with a gap every 4 s)."""
    rate = 24_000
    t = np.arange(130 * rate) / rate
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    audio[(t % 4) > 3.5] = 0.0
    src = tmp_path / "long.wav"
    sf.write(src, audio, rate)
    notes = silk_notes(src, 60.0)
    assert len(notes) == 3
    lengths = [silk_seconds(data) for data, _ in notes]
    assert all(length <= 60.0 for length in lengths)
    assert abs(sum(lengths) - 130.0) < 0.2
    assert all(
        abs(seconds - length) < 0.03 for (_, seconds), length in zip(notes, lengths, strict=True)
    )
    cuts = np.cumsum([seconds for _, seconds in notes])[:-1]
    assert all(cut % 4 > 3.5 for cut in cuts)  # in a gap


async def test_the_allow_list_takes_qq_numbers_and_groups(clean_env: Path) -> None:
    """allow = 10002 and group:20002: Bob is answered anywhere, anyone in group 20002, and
    Alice in a private chat is not."""
    allow = f"{BOB},group:{OTHER_ROOM}"
    async with FakeOneBot() as fake, running(clean_env, **qq_env(fake, MSGVOICE_QQ_ALLOW=allow)):
        await connected(fake)
        fake.say(ALICE, "/help")
        fake.say(CAROL, "/help", group=OTHER_ROOM)
        fake.say(BOB, "/help", group=ROOM)
        await until(lambda: fake.texts(f"group:{OTHER_ROOM}") and fake.texts(f"group:{ROOM}"))
        fake.say(BOB, "/help")
        await until(lambda: fake.texts(f"user:{BOB}"))
    assert not fake.to(f"user:{ALICE}")
