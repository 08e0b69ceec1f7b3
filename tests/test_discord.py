"""The Discord channel against a loopback Discord (tests/fake_discord.py: the REST API and the
Gateway as discord-api-docs describe them), with msgvoice's daemon running as users run it."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import soundfile as sf

from msgvoice.channels.discord_api import IS_VOICE_MESSAGE
from msgvoice.config import load
from msgvoice.net import tls
from msgvoice.ops.apps import check_discord
from msgvoice.speech.convert import describe
from tests.conftest import until
from tests.daemon_util import FAULT_ENGINE, running
from tests.fake_discord import TOKEN, FakeDiscord

DM, ROOM, OTHER, GUILD = "501", "601", "602", "700"
ALICE, BOB = "9001", "9002"


def dc_env(fake: FakeDiscord, **more: str) -> dict[str, str]:
    return {
        "MSGVOICE_DISCORD_ENABLED": "true",
        "MSGVOICE_DISCORD_API_BASE": fake.url,
        "DISCORD_BOT_TOKEN": TOKEN,
        **more,
    }


def ogg(message: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """A voice message's one file and its attachment metadata."""
    (upload,) = message["files"]
    (meta,) = message["payload"]["attachments"]
    return upload["data"], meta


def seconds(data: bytes) -> float:
    samples, rate = sf.read(io.BytesIO(data))
    return float(len(samples) / rate)


async def ready(fake: FakeDiscord) -> None:
    """Connected, and the slash commands registered."""
    await until(lambda: fake.connected.is_set() and fake.commands)


async def test_tts_in_a_dm_comes_back_as_a_native_voice_message(clean_env: Path) -> None:
    """`/tts 温柔：晚安` in a DM → one message flagged IS_VOICE_MESSAGE, no content, one
    OGG/Opus 48 kHz attachment whose duration_secs is the audio's length and whose waveform is
    base64 of at most 256 bytes; the multipart body names it files[0] with payload_json."""
    async with FakeDiscord() as fake, running(clean_env, **dc_env(fake)):
        await ready(fake)
        fake.say(DM, ALICE, "/tts 温柔：晚安")
        await until(lambda: fake.voice_messages(DM))
    (message,) = fake.messages
    payload = message["payload"]
    assert payload["flags"] == IS_VOICE_MESSAGE and not payload.get("content")
    data, meta = ogg(message)
    assert message["files"][0]["name"] == "files[0]" and meta["id"] == 0
    assert message["files"][0]["type"] == "audio/ogg"
    (clean_env / "note.ogg").write_bytes(data)
    assert describe(clean_env / "note.ogg") == ("ogg", "opus", 48000)
    assert abs(meta["duration_secs"] - seconds(data)) < 0.05 and seconds(data) > 0.3
    waveform = base64.b64decode(meta["waveform"])
    assert 0 < len(waveform) <= 256 and max(waveform) == 255
    assert {c["name"] for c in fake.commands} == {"tts", "mode", "help"}


async def test_a_slash_command_is_deferred_then_answered_after_a_slow_synthesis(
    clean_env: Path,
) -> None:
    """A /tts whose synthesis takes 4 s: deferred (type 5) at once, inside Discord's 3 s;
    the voice message arrives in the channel after, and the "thinking…" is withdrawn. A
    /mode as a slash command replaces its "thinking…" with the answer."""
    async with (
        FakeDiscord() as fake,
        running(clean_env, **dc_env(fake, MSGVOICE_TTS_ENGINE=FAULT_ENGINE, FAULT_DELAY_S="4")),
    ):
        await ready(fake)
        asked = fake.slash(ROOM, ALICE, "tts", "晚安", guild=GUILD)
        await until(lambda: asked.callbacks)
        assert asked.callbacks == [{"type": 5}] and not fake.messages
        await until(lambda: fake.voice_messages(ROOM) and asked.deleted, within=60)
        assert fake.voice_messages(ROOM)[0]["at"] - asked.at >= 3.5  # after the synthesis
        mode = fake.slash(ROOM, ALICE, "mode", "style 撒娇", guild=GUILD)
        await until(lambda: mode.edits)
        shown = fake.slash(ROOM, BOB, "mode", None, guild=GUILD)
        await until(lambda: shown.edits)
    assert "撒娇" in json.dumps(mode.edits[0]["payload"], ensure_ascii=False)
    assert "撒娇" in shown.edits[0]["payload"]["content"]  # the setting is the channel's
    assert not mode.deleted and len(fake.voice_messages()) == 1


async def test_a_channel_without_voice_messages_gets_an_audio_file(clean_env: Path) -> None:
    """50173 "Cannot send voice messages in this channel": the same audio goes as an ordinary
    attachment (no voice flag, no waveform), and the item is done."""
    async with FakeDiscord(no_voice={ROOM}) as fake, running(clean_env, **dc_env(fake)):
        await ready(fake)
        fake.say(ROOM, ALICE, f"<@{1100}> /tts 你好", guild=GUILD)
        await until(lambda: fake.messages)
    (message,) = fake.messages
    assert not message["payload"].get("flags")
    data, meta = ogg(message)
    assert "waveform" not in meta and seconds(data) > 0.2
    assert [status for route, status in fake.answers if "messages" in route] == [403, 200]


async def test_a_429_waits_retry_after_then_sends_once(clean_env: Path) -> None:
    """Two 429s (the second global) with retry_after 0.3 s: the voice message arrives once,
    no sooner than the waits, and nothing is posted twice."""
    async with FakeDiscord() as fake, running(clean_env, **dc_env(fake)):
        await ready(fake)
        fake.limit(1, 0.3)
        fake.limit(1, 0.3, glob=True)
        fake.say(DM, ALICE, "/tts 一二三")
        await until(lambda: fake.voice_messages(DM))
    statuses = [status for route, status in fake.answers if route.endswith("/messages")]
    assert statuses == [429, 429, 200] and len(fake.messages) == 1


async def test_missing_access_fails_that_item_while_another_channel_is_served(
    clean_env: Path,
) -> None:
    """A channel that answers 50001 Missing Access gets its item marked failed (once, not
    retried); another channel's /tts, asked after, is delivered."""
    async with (
        FakeDiscord(no_access={ROOM}) as fake,
        running(clean_env, **dc_env(fake)) as (_, client),
    ):
        await ready(fake)
        fake.say(ROOM, ALICE, f"<@{1100}> /tts 你好", guild=GUILD)
        await until(lambda: any(s == 403 for _, s in fake.answers))
        fake.say(DM, BOB, "/tts 晚安")
        await until(lambda: fake.voice_messages(DM))
        items = (await client.get(f"/v1/chats/dc:{ROOM}/outbox")).json()["items"]
    assert [i["state"] for i in items] == ["failed"] and "50001" in items[0]["error"]
    assert [s for _, s in fake.answers if "601" in _] == [403]


async def test_a_dropped_gateway_resumes_and_misses_no_command(clean_env: Path) -> None:
    """The connection dies without a close frame; two commands are written meanwhile. The
    bot resumes its session (no second IDENTIFY) and answers both, once each."""
    async with FakeDiscord() as fake, running(clean_env, **dc_env(fake)):
        await ready(fake)
        fake.say(DM, ALICE, "/help")  # answered once the bot has READY (sent before it)
        await until(lambda: fake.texts(DM))
        await fake.drop()
        fake.say(DM, ALICE, "/tts 一")
        fake.say(OTHER, BOB, f"<@{1100}> /tts 二", guild=GUILD)
        await until(lambda: fake.voice_messages(DM) and fake.voice_messages(OTHER))
    assert fake.resumes == 1 and fake.identifies == 1
    assert len(fake.messages) == 3  # the help and the two voice messages


async def test_plain_server_messages_need_the_message_content_intent(clean_env: Path) -> None:
    """Without the intent a server's plain `/tts` arrives empty and is not answered (a DM is);
    with `discord.message_content` on and the intent granted, the same message is."""
    async with FakeDiscord() as fake, running(clean_env, **dc_env(fake)):
        await ready(fake)
        fake.say(ROOM, ALICE, "/tts 不会说", guild=GUILD)
        fake.say(DM, ALICE, "/mode voice on")
        await until(lambda: fake.texts(DM))
    assert not fake.voice_messages(ROOM)
    async with (
        FakeDiscord(content_intent=True) as granted,
        running(clean_env, **dc_env(granted, MSGVOICE_DISCORD_MESSAGE_CONTENT="1")),
    ):
        await ready(granted)
        granted.say(ROOM, ALICE, "/tts 会说", guild=GUILD)
        await until(lambda: granted.voice_messages(ROOM))


async def test_an_intent_not_granted_stops_the_channel_with_one_line(
    clean_env: Path, caplog: Any
) -> None:
    """`discord.message_content` on but the intent not switched on: Discord closes 4014; the
    channel stops with a line that says what to switch on, and the daemon keeps serving."""
    async with (
        FakeDiscord() as fake,
        running(clean_env, **dc_env(fake, MSGVOICE_DISCORD_MESSAGE_CONTENT="1")) as (_, client),
    ):
        await until(lambda: "discord channel stopped" in caplog.text)
        assert (await client.get("/healthz")).status_code == 200
    assert "Message Content intent" in caplog.text and "Traceback" not in caplog.text


async def test_doctor_names_the_bot_and_a_refused_token(clean_env: Path) -> None:
    async with FakeDiscord() as fake, httpx.AsyncClient(verify=tls()) as http:
        config = load(None, dc_env(fake))
        good = await check_discord(config, http)
        fake.revoked = True
        bad = await check_discord(config, http)
        fake.revoked = False
        intent = await check_discord(
            load(None, {**dc_env(fake), "MSGVOICE_DISCORD_MESSAGE_CONTENT": "1"}), http
        )
    assert good is not None and good.status == "pass" and "msgvoice (1100)" in good.message
    assert bad is not None and bad.status == "error" and "Reset Token" in (bad.fix or "")
    assert (
        intent is not None and intent.status == "error" and "Message Content" in (intent.fix or "")
    )


async def test_a_slash_command_where_the_bot_may_not_post_is_answered_in_place(
    clean_env: Path,
) -> None:
    """A /tts in a channel that refuses the bot's messages (50001: a user-installed app, or
    no access): the audio replaces the "thinking…" as a file, since an interaction's answer
    needs no channel permission; nothing is marked failed."""
    async with (
        FakeDiscord(no_access={ROOM}) as fake,
        running(clean_env, **dc_env(fake)) as (_, client),
    ):
        await ready(fake)
        asked = fake.slash(ROOM, ALICE, "tts", "你好", guild=GUILD)
        await until(lambda: asked.edits)
        await until(
            lambda: _states(client, ROOM, ["sent"]),
        )
    (edit,) = asked.edits
    (upload,) = edit["files"]
    assert upload["type"] == "audio/ogg" and seconds(upload["data"]) > 0.2
    assert not fake.messages and not asked.deleted


async def _states(client: httpx.AsyncClient, channel: str, want: list[str]) -> bool:
    items = (await client.get(f"/v1/chats/dc:{channel}/outbox")).json()["items"]
    return [i["state"] for i in items] == want


async def test_an_event_the_library_cannot_read_is_passed_over_alone(clean_env: Path) -> None:
    """An INTERACTION_CREATE discord.py cannot read (fields missing) is logged and passed
    over; the connection and its session stay (no new IDENTIFY, no RESUME), and the next
    command is answered."""
    async with FakeDiscord() as fake, running(clean_env, **dc_env(fake)):
        await ready(fake)
        fake.dispatch("INTERACTION_CREATE", {"id": "1", "type": 2})
        fake.say(DM, ALICE, "/tts 还在")
        await until(lambda: fake.voice_messages(DM))
    assert (fake.identifies, fake.resumes) == (1, 0)


async def test_a_slash_command_deferred_before_a_restart_is_answered_after_it(
    clean_env: Path,
) -> None:
    """/tts is deferred, and the daemon stops during its synthesis (no drain); started
    again, it makes the voice note, posts it once and withdraws the "thinking…": the
    interaction's token was in the journal."""
    async with FakeDiscord() as fake:
        env = dc_env(
            fake,
            MSGVOICE_TTS_ENGINE=FAULT_ENGINE,
            FAULT_DELAY_S="1",
            MSGVOICE_DAEMON_DRAIN_TIMEOUT_S="0",
        )
        async with running(clean_env, **env) as (daemon, _):
            await ready(fake)
            asked = fake.slash(DM, ALICE, "tts", "晚安")
            await until(lambda: daemon.journal.cursor(f"discord.deferred:dc:{DM}"))
        assert not fake.messages and not asked.deleted
        async with running(clean_env, **env):
            await until(lambda: fake.voice_messages(DM) and asked.deleted)
    assert len(fake.messages) == 1 and fake.identifies == 2
