"""The Feishu / Lark channel against a loopback open platform (tests/fake_feishu.py: the REST
API and the long connection as Feishu's docs and lark-oapi's client describe them), with
msgvoice's daemon running as users run it."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from msgvoice.config import load
from msgvoice.net import tls
from msgvoice.ops.apps import check_feishu
from msgvoice.speech.convert import describe
from tests.conftest import until
from tests.daemon_util import running
from tests.fake_feishu import APP_ID, APP_SECRET, BOT_OPEN_ID, FakeFeishu

DM, ROOM, OTHER_ROOM, LEFT_ROOM = "oc_dm1", "oc_room1", "oc_room2", "oc_left"
ALICE, BOB = "ou_alice", "ou_bob"


def fs_env(fake: FakeFeishu, **more: str) -> dict[str, str]:
    return {
        "MSGVOICE_FEISHU_ENABLED": "true",
        "MSGVOICE_FEISHU_DOMAIN": fake.url,
        "FEISHU_APP_ID": APP_ID,
        "FEISHU_APP_SECRET": APP_SECRET,
        **more,
    }


def seconds(data: bytes) -> float:
    samples, rate = sf.read(io.BytesIO(data))
    return float(len(samples) / rate)


async def connected(fake: FakeFeishu, times: int = 1) -> None:
    await until(
        lambda: fake.endpoint_requests >= times and len(fake.clients) >= 1 and fake.pings >= times
    )


async def outbox(client: httpx.AsyncClient, chat: str) -> list[dict[str, str]]:
    items: list[dict[str, str]] = (await client.get(f"/v1/chats/{chat}/outbox")).json()["items"]
    return items


async def test_tts_comes_back_as_an_audio_message_with_its_duration(clean_env: Path) -> None:
    """`/tts 温柔：晚安` in a private chat, and @-mentioning the bot in a group (an event that
    arrives in two frames) → an OGG/Opus file uploaded with file_type opus and its duration
    in ms, then one `audio` message with that file_key in each chat."""
    async with FakeFeishu() as fake, running(clean_env, **fs_env(fake)):
        await connected(fake)
        fake.say(DM, ALICE, "/tts 温柔：晚安")
        fake.say(ROOM, BOB, "/tts 温柔：晚安", group=True, at_bot=True, split=True)
        await until(lambda: fake.voices(DM) and fake.voices(ROOM))
    for chat in (DM, ROOM):
        (voice,) = fake.voices(chat)
        (clean_env / "v.ogg").write_bytes(voice["data"])
        assert describe(clean_env / "v.ogg")[:2] == ("ogg", "opus")
        assert seconds(voice["data"]) > 0.3
        assert abs(voice["duration"] - seconds(voice["data"]) * 1000) < 30
    assert len(fake.messages) == 2


async def test_mode_round_trips_and_voice_on_voices_the_bot_replies(clean_env: Path) -> None:
    """`/mode style 撒娇` and `/mode voice on` are answered as text messages; the bot's reply
    (posted through the HTTP API) then comes as text and as an audio message."""
    async with FakeFeishu() as fake, running(clean_env, **fs_env(fake)) as (_, client):
        await connected(fake)
        fake.say(DM, ALICE, "/mode style 撒娇")
        await until(lambda: len(fake.texts(DM)) == 1)
        fake.say(DM, ALICE, "/mode voice on")
        await until(lambda: len(fake.texts(DM)) == 2)
        answer = await client.post(f"/v1/chats/feishu:{DM}/replies", json={"text": "好的呀"})
        assert answer.status_code < 300, answer.text
        await until(lambda: fake.voices(DM))
    texts = fake.texts(DM)
    assert "撒娇" in texts[0] and "语音" in texts[1] and texts[2] == "好的呀"


async def test_a_group_talking_among_itself_is_not_answered(clean_env: Path) -> None:
    """In a group, plain talk is left alone; a `/tts` without the @ is ours, and so is
    plain text that @-mentions the bot."""
    async with FakeFeishu() as fake, running(clean_env, **fs_env(fake)):
        await connected(fake)
        fake.say(ROOM, BOB, "大家好", group=True)
        fake.say(ROOM, BOB, "/tts 一", group=True)
        await until(lambda: fake.voices(ROOM))
        fake.say(OTHER_ROOM, BOB, "/help", group=True, at_bot=True)
        await until(lambda: fake.texts(OTHER_ROOM))
    assert len(fake.messages) == 2


async def test_an_expiring_token_is_renewed_and_a_revoked_one_asked_again(
    clean_env: Path,
) -> None:
    """Tokens good for 4 s: once the one held has under half its life left, the next send
    asks for a new one first (no refusal); one revoked mid-run (99991663, as Feishu answers
    an expired token) is forgotten, asked again, and the reply goes once."""
    async with FakeFeishu(expire=4) as fake, running(clean_env, **fs_env(fake)):
        await connected(fake)
        fake.say(DM, ALICE, "/help")
        await until(lambda: len(fake.texts(DM)) == 1)
        held = fake.token_requests
        await until(lambda: min(fake.tokens.values()) - time.monotonic() < 1.9)
        fake.say(DM, ALICE, "/help")
        await until(lambda: len(fake.texts(DM)) == 2)
        assert fake.token_requests == held + 1
        assert not [c for _, s, c in fake.answers if s >= 400]
        fake.revoke()
        fake.say(DM, ALICE, "/help")
        await until(lambda: len(fake.texts(DM)) == 3)
    assert [c for _, s, c in fake.answers if s >= 400] == [99991663]
    assert len(fake.messages) == 3


async def test_a_group_the_bot_is_not_in_fails_its_item_while_another_is_served(
    clean_env: Path,
) -> None:
    """230002 "The bot can not be outside the group": that item is failed at once with the
    code in its error; a private chat asked after is served; a rate limit (99991400) is
    waited out and the message posted once."""
    async with (
        FakeFeishu(outside=(LEFT_ROOM,)) as fake,
        running(clean_env, **fs_env(fake)) as (_, client),
    ):
        await connected(fake)
        fake.say(LEFT_ROOM, BOB, "/tts 你好", group=True, at_bot=True)
        await until(lambda: any(c == 230002 for _, _, c in fake.answers))
        fake.limit(1)
        fake.say(DM, ALICE, "/tts 晚安")
        await until(lambda: fake.voices(DM))
        items = await outbox(client, f"feishu:{LEFT_ROOM}")
    assert [i["state"] for i in items] == ["failed"] and "230002" in items[0]["error"]
    assert sum(c == 230002 for _, _, c in fake.answers) == 1
    assert sum(c == 99991400 for _, _, c in fake.answers) == 1 and len(fake.messages) == 1


async def test_a_dropped_connection_reconnects_and_answers_each_event_once(
    clean_env: Path,
) -> None:
    """The connection dies without a close frame: the channel asks for the endpoint again
    and reconnects; an event Feishu pushes twice (same event_id) is answered once; one sent
    after the reconnect is answered."""
    async with FakeFeishu() as fake, running(clean_env, **fs_env(fake)):
        await connected(fake)
        fake.say(DM, ALICE, "/help", event_id="ev-1")
        await until(lambda: fake.texts(DM))
        await fake.drop()
        await connected(fake, 2)
        fake.say(DM, ALICE, "/help", event_id="ev-1")
        fake.say(DM, ALICE, "/tts 又见面了")
        await until(lambda: fake.voices(DM))
    assert len(fake.messages) == 2


async def test_refused_credentials_stop_the_channel_with_one_line(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong App Secret: one line naming the settings; the daemon goes on; the platform is
    not asked again and again."""
    caplog.set_level(logging.ERROR)
    async with (
        FakeFeishu() as fake,
        running(clean_env, **fs_env(fake, FEISHU_APP_SECRET="wrong")) as (_, client),
    ):
        await until(lambda: "feishu channel stopped" in caplog.text)
        assert (await client.get("/healthz")).status_code == 200
    assert fake.token_requests == 1
    (line,) = [r for r in caplog.records if "feishu channel stopped" in r.getMessage()]
    assert "feishu.app_secret" in line.getMessage() and not line.exc_info


async def test_doctor_names_the_bot_and_refused_credentials(clean_env: Path) -> None:
    async with FakeFeishu() as fake:
        env = {"MSGVOICE_STATE_DIR": str(clean_env), **fs_env(fake)}
        async with httpx.AsyncClient(verify=tls()) as client:
            good = await check_feishu(load(None, env), client)
            bad = await check_feishu(load(None, {**env, "FEISHU_APP_SECRET": "x"}), client)
    assert good is not None and good.status == "pass" and BOT_OPEN_ID in good.message
    assert bad is not None and bad.status == "error" and "feishu.app_secret" in bad.fix


def test_the_event_json_is_read_as_feishu_sends_it() -> None:
    """The mention placeholder of the bot is taken out, another person's is shown by name."""
    from msgvoice.channels.feishu import _read  # noqa: PLC0415

    message = {
        "message_type": "text",
        "content": json.dumps({"text": "@_user_1 /tts 你好 @_user_2"}),
        "mentions": [
            {"key": "@_user_1", "id": {"open_id": BOT_OPEN_ID}, "name": "bot"},
            {"key": "@_user_2", "id": {"open_id": "ou_x"}, "name": "小明"},
        ],
    }
    assert _read(message, BOT_OPEN_ID) == ("/tts 你好 @小明", True)
    assert _read({"message_type": "audio", "content": "{}"}, BOT_OPEN_ID) == (None, False)


async def test_the_allow_list_takes_open_ids_and_chat_ids(clean_env: Path) -> None:
    """allow = Bob's open_id and one group's chat id: Alice alone in a private chat gets no
    answer; Alice in that group does, and Bob does anywhere."""
    allow = f"{BOB},{ROOM}"
    async with (
        FakeFeishu() as fake,
        running(clean_env, **fs_env(fake, MSGVOICE_FEISHU_ALLOW=allow)),
    ):
        await connected(fake)
        fake.say(DM, ALICE, "/help")
        fake.say(ROOM, ALICE, "/help", group=True, at_bot=True)
        fake.say(OTHER_ROOM, BOB, "/help", group=True, at_bot=True)
        await until(lambda: fake.texts(ROOM) and fake.texts(OTHER_ROOM))
        fake.say("oc_dm2", BOB, "/help")
        await until(lambda: fake.texts("oc_dm2"))
    assert not fake.sent(DM)


async def test_answers_that_are_not_feishus_are_refusals_not_tracebacks() -> None:
    """A token answer without a token, and a send answered by JSON that is not an object (a
    proxy's), each come back as a ChannelError the outbox understands: the first to be
    tried again, the second transient as its 502 says."""
    from msgvoice.channels.lark_api import Api  # noqa: PLC0415
    from msgvoice.channels.outbox import ChannelError  # noqa: PLC0415

    async with FakeFeishu() as fake, httpx.AsyncClient(verify=tls()) as client:
        api = Api(client, fake.url, APP_ID, APP_SECRET)
        fake.garbled["/open-apis/auth/v3/tenant_access_token/internal"] = (200, '{"code": 0}')
        with pytest.raises(ChannelError, match="no tenant_access_token") as no_token:
            await api.token()
        del fake.garbled["/open-apis/auth/v3/tenant_access_token/internal"]
        fake.garbled["/open-apis/im/v1/messages"] = (502, "[1, 2]")
        with pytest.raises(ChannelError, match="HTTP 502") as garbled:
            await api.send(DM, "text", {"text": "hi"}, "u1")
    assert not no_token.value.permanent
    assert not garbled.value.permanent and garbled.value.retry_after_s is None
