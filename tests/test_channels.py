"""Telegram and iMessage channels against protocol-faithful fakes: a loopback Bot API server
and an `imsg rpc` program over stdio."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from msgvoice.compose import DaemonParts
from msgvoice.speech.convert import decode, describe
from tests.conftest import until
from tests.daemon_util import FAULT_ENGINE, running
from tests.fake_telegram import TOKEN, FakeTelegram

FAKE_IMSG = Path(__file__).resolve().parent / "fake_imsg.py"


async def settled(daemon: DaemonParts, prefix: str, cursor: str, last: int) -> None:
    """Wait until the channel has handled every incoming message up to `last` (its journalled
    cursor says so), every job is final and every outbox item acknowledged: after that
    nothing more can be sent, so what was sent is all there will be."""
    router = daemon.router
    await until(
        lambda: (
            int(router.cursor(cursor) or 0) >= last
            and not daemon.journal.open_jobs()
            and not router.pending(prefix)
        )
    )


async def tg_settled(daemon: DaemonParts, bot: FakeTelegram) -> None:
    await settled(daemon, "tg:", "telegram.offset", bot.updates[-1]["update_id"] + 1)


async def im_settled(daemon: DaemonParts, imsg: Imsg) -> None:
    await settled(daemon, "im:", "imessage.rowid", imsg.rowid)


async def one_voice_note(state: Path, imsg: Imsg) -> dict[str, Any]:
    """`/tts 你好` through a daemon on `imsg`: the one line imsg was asked to send."""
    async with running(state, **imsg.env()) as (daemon, _):
        imsg.incoming("/tts 你好")
        await until(lambda: imsg.lines("sent.jsonl"))
        await im_settled(daemon, imsg)
    (voice,) = imsg.lines("sent.jsonl")
    return voice


# -- Telegram ----------------------------------------------------------------------------------


def tg_env(bot: FakeTelegram) -> dict[str, str]:
    return {
        "MSGVOICE_TELEGRAM_ENABLED": "true",
        "MSGVOICE_TELEGRAM_BASE_URL": bot.url,
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "MSGVOICE_TELEGRAM_POLL_TIMEOUT_S": "1",
    }


async def test_telegram_tts_becomes_one_ogg_opus_voice_note(clean_env: Path) -> None:
    """`/tts 开心：你好` in → one sendVoice with OGG/Opus 48 kHz mono (a voice note), with a
    record_voice chat action first; `/mode style` replies as text."""
    async with FakeTelegram() as bot, running(clean_env, **tg_env(bot)) as (daemon, _):
        bot.text(42, "/mode style 温柔")
        bot.text(42, "/tts 开心：你好")
        await until(lambda: bot.sent_by("sendVoice"))
        await tg_settled(daemon, bot)
    (voice,) = bot.sent_by("sendVoice")
    assert voice["chat_id"] == "42" and int(voice["duration"]) >= 0
    info = sf.info(io.BytesIO(voice["voice_bytes"]))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("OGG", "OPUS", 48_000, 1)
    assert info.duration > 0.3
    texts = [m["text"] for m in bot.sent_by("sendMessage")]
    assert texts == ["已设置风格：温柔"]
    action = bot.sent_by("sendChatAction")[0]
    assert action["action"] == "record_voice" and action["at"] < voice["at"]


async def test_telegram_ignores_edits_and_answers_non_text_politely(clean_env: Path) -> None:
    """Edited messages are ignored; a sticker gets a short hint; nothing crashes."""
    async with FakeTelegram() as bot, running(clean_env, **tg_env(bot)) as (daemon, _):
        bot.push(edited_message={"message_id": 1, "chat": {"id": 5}, "text": "/tts 改了"})
        bot.push(
            message={
                "message_id": 2,
                "chat": {"id": 5},
                "from": {"id": 7},
                "sticker": {"file_id": "x"},
            }
        )
        bot.text(5, "/help")
        await until(lambda: len(bot.sent_by("sendMessage")) == 2)
        await tg_settled(daemon, bot)
    texts = [m["text"] for m in bot.sent_by("sendMessage")]
    assert texts[0].startswith("目前只支持文字消息") and texts[1].startswith("/tts 文本")
    assert bot.sent_by("sendVoice") == []


async def test_telegram_429_and_502_are_retried_without_duplicates(clean_env: Path) -> None:
    """A 502 on getUpdates backs off and polling resumes; a 429 on sendMessage waits out
    retry_after, then the message is delivered exactly once."""
    async with (
        FakeTelegram(failures={"getUpdates": [502], "sendMessage": [429]}) as bot,
        running(clean_env, **tg_env(bot)) as (daemon, _),
    ):
        bot.text(9, "/help")
        await until(lambda: bot.sent_by("sendMessage"))
        await tg_settled(daemon, bot)
    assert len(bot.sent_by("sendMessage")) == 1
    assert bot.sent_by("sendMessage")[0]["at"] - bot.failed_at["sendMessage"][0] >= 1.0


async def test_telegram_restart_resumes_at_the_saved_offset(clean_env: Path) -> None:
    """After a restart the channel asks from the next update on: nothing replayed, nothing lost."""
    async with FakeTelegram() as bot:
        async with running(clean_env, **tg_env(bot)) as (daemon, _):
            bot.text(3, "/mode voice on")
            bot.text(3, "/mode")
            await until(lambda: len(bot.sent_by("sendMessage")) == 2)
            # Stopped before the journal records Telegram's answer, a reply is sent again
            # (at least once, as Telegram has no idempotency key): not what this is about.
            await tg_settled(daemon, bot)
        bot.text(3, "/help")
        async with running(clean_env, **tg_env(bot)) as (daemon, _):
            await until(lambda: len(bot.sent_by("sendMessage")) == 3)
            await tg_settled(daemon, bot)
    assert len(bot.sent_by("sendMessage")) == 3
    assert bot.offsets[-1] >= 1003


async def test_telegram_allow_list(clean_env: Path) -> None:
    """Only allowed users get answers."""
    async with (
        FakeTelegram() as bot,
        running(clean_env, MSGVOICE_TELEGRAM_ALLOW="7", **tg_env(bot)) as (daemon, _),
    ):
        bot.text(11, "/help", user_id=666)
        bot.text(12, "/help", user_id=7)
        await until(lambda: bot.sent_by("sendMessage"))
        await tg_settled(daemon, bot)
    assert [m["chat_id"] for m in bot.sent_by("sendMessage")] == ["12"]


async def test_a_blocked_chat_never_silences_the_others(clean_env: Path) -> None:
    """Chat 41 blocked the bot (403): chat 42 still gets its voice note in the normal time;
    41's item is marked failed with Telegram's reason, visible in its outbox and job, counted
    in /metrics, and never retried."""
    async with FakeTelegram(blocked={"41"}) as bot, running(clean_env, **tg_env(bot)) as (d, c):
        bot.text(41, "/tts 你好")
        bot.text(42, "/tts 你好")
        await until(lambda: bot.sent_by("sendVoice"))
        await tg_settled(d, bot)
        items = (await c.get("/v1/chats/tg:41/outbox")).json()["items"]
        job = (await c.get(f"/v1/jobs/{items[0]['job_id']}")).json()
        metrics = (await c.get("/metrics")).text
    assert [v["chat_id"] for v in bot.sent_by("sendVoice")] == ["42"]
    assert items[0]["state"] == "failed" and "blocked by the user" in items[0]["error"]
    assert job["delivery"] == {"state": "failed", "error": items[0]["error"]}
    assert "msgvoice_outbox_refused_total 1.0" in metrics
    assert bot.calls.count("sendVoice") == 2  # one each: 41's was not retried


async def test_a_webhook_is_deleted_once_and_polling_goes_on(clean_env: Path) -> None:
    """getUpdates answers 409 while a webhook is set: msgvoice deletes it once (delete_webhook
    is on by default) and carries on, so the next message is answered."""
    async with (
        FakeTelegram(webhook_url="https://example.invalid/hook") as bot,
        running(clean_env, **tg_env(bot)) as (daemon, _),
    ):
        bot.text(5, "/help")
        await until(lambda: bot.sent_by("sendMessage"))
        await tg_settled(daemon, bot)
    assert bot.calls.count("deleteWebhook") == 1 and bot.webhook_url == ""


async def test_forum_topic_replies_land_in_the_topic(clean_env: Path) -> None:
    """A message in forum topic 7 is answered in topic 7 (sendVoice, sendChatAction and
    sendMessage carry message_thread_id), and the topic keeps its own settings."""
    async with FakeTelegram() as bot, running(clean_env, **tg_env(bot)) as (daemon, _):
        bot.text(-1001, "/mode style 温柔", thread=7)
        bot.text(-1001, "/tts 你好", thread=7)
        await until(lambda: bot.sent_by("sendVoice"))
        await tg_settled(daemon, bot)
        style = daemon.journal.chat("tg:-1001#7").style
    (voice,) = bot.sent_by("sendVoice")
    assert voice["chat_id"] == "-1001" and voice["message_thread_id"] == "7"
    assert bot.sent_by("sendMessage")[0]["message_thread_id"] == "7"
    assert bot.sent_by("sendChatAction")[0]["message_thread_id"] == "7"
    assert style == "温柔"


async def test_commands_for_another_bot_are_left_alone(clean_env: Path) -> None:
    """In a group `/tts@other_bot` is another bot's; `/tts@msgvoice_bot` and `/tts` are ours."""
    async with FakeTelegram() as bot, running(clean_env, **tg_env(bot)) as (daemon, _):
        bot.text(-5, "/help@other_bot")
        bot.text(-5, "/help@msgvoice_bot")
        bot.text(-5, "/help")
        await until(lambda: len(bot.sent_by("sendMessage")) >= 2)
        await tg_settled(daemon, bot)
    assert len(bot.sent_by("sendMessage")) == 2


async def test_recording_voice_shows_until_the_voice_note_is_sent(clean_env: Path) -> None:
    """While a slow synthesis runs, "recording voice" is resent every ~4 s (Telegram shows an
    action for 5 s), and stops once the voice note is made."""
    env = {"MSGVOICE_TTS_ENGINE": FAULT_ENGINE, "FAULT_DELAY_S": "5"}
    async with FakeTelegram() as bot, running(clean_env, **env, **tg_env(bot)) as (daemon, _):
        bot.text(8, "/tts 慢")
        await until(lambda: bot.sent_by("sendVoice"), within=30)
        await tg_settled(daemon, bot)
        actions = bot.sent_by("sendChatAction")
    assert len(actions) == 2 and all(a["action"] == "record_voice" for a in actions)
    assert 3.5 < actions[1]["at"] - actions[0]["at"] < 5.0
    assert actions[-1]["at"] < bot.sent_by("sendVoice")[0]["at"]


async def test_a_three_minute_voice_note_stays_a_voice_bubble(clean_env: Path) -> None:
    """A /tts that speaks for over 3 minutes still goes as one voice note of at most 1 MB
    (a lower Opus bit rate), which Telegram shows as a bubble, not a file."""
    text = "今天天气很好，我们一起去公园散步，然后去喝一杯茶，聊聊最近的生活。" * 33
    async with FakeTelegram() as bot, running(clean_env, **tg_env(bot)) as (daemon, _):
        bot.text(9, f"/tts {text}")
        await until(lambda: bot.sent_by("sendVoice"), within=120)
        await tg_settled(daemon, bot)
    (voice,) = bot.sent_by("sendVoice")
    info = sf.info(io.BytesIO(voice["voice_bytes"]))
    assert info.duration > 180 and len(voice["voice_bytes"]) <= 1_000_000
    assert (info.format, info.subtype, info.samplerate) == ("OGG", "OPUS", 48_000)
    assert voice["as_file"] is False


async def test_a_refused_token_stops_the_channel_not_the_daemon(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A token the Bot API refuses (401) stops the Telegram channel with one clear error
    naming where the token came from; the daemon goes on serving HTTP."""
    async with FakeTelegram() as bot:
        env = {**tg_env(bot), "TELEGRAM_BOT_TOKEN": "999:WRONG"}
        async with running(clean_env, **env) as (_, client):
            await until(lambda: "telegram channel stopped" in caplog.text)
            assert (await client.get("/healthz")).status_code == 200
    (line,) = [r.getMessage() for r in caplog.records if "channel stopped" in r.getMessage()]
    assert "alias TELEGRAM_BOT_TOKEN" in line and "401" in line


async def test_a_token_revoked_while_running_stops_the_channel(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A token revoked after the bot started (401 on the next getUpdates) stops the channel
    with the same one error; polling is not restarted over and over (then the channel
    would never stop)."""
    async with FakeTelegram() as bot, running(clean_env, **tg_env(bot)) as (_, client):
        bot.text(3, "/help")
        await until(lambda: bot.sent_by("sendMessage"))
        bot.revoked = True
        await until(lambda: "telegram channel stopped" in caplog.text)
        assert (await client.get("/healthz")).status_code == 200
    assert "restarting it" not in caplog.text


# -- iMessage ----------------------------------------------------------------------------------


class Imsg:
    """The fake imsg's state folder, with `steering` files in it (see tests/fake_imsg.py)."""

    def __init__(self, root: Path, *steering: str) -> None:
        self.dir = root
        root.mkdir(parents=True, exist_ok=True)
        for name in steering:
            (root / name).touch()
        self.rowid = 100

    def incoming(self, text: str, chat_id: int = 1, is_from_me: bool = False) -> int:
        self.rowid += 1
        message = {
            "id": self.rowid,
            "chat_id": chat_id,
            "guid": f"g{self.rowid}",
            "sender": "+15550001",
            "is_from_me": is_from_me,
            "text": text,
            "created_at": "2026-11-23T03:00:00Z",
            "attachments": [],
            "reactions": [],
        }
        with (self.dir / "inbox.jsonl").open("a", encoding="utf-8") as inbox:
            inbox.write(json.dumps(message, ensure_ascii=False) + "\n")
        return self.rowid

    def lines(self, name: str) -> list[dict[str, Any]]:
        path = self.dir / name
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def env(self) -> dict[str, str]:
        return {
            "MSGVOICE_IMESSAGE_ENABLED": "true",
            "FAKE_IMSG_DIR": str(self.dir),
            "MSGVOICE_IMESSAGE_COMMAND": json.dumps([sys.executable, str(FAKE_IMSG), "rpc"]),
            "MSGVOICE_IMESSAGE_REQUEST_TIMEOUT_S": "2",
        }


async def test_imessage_tts_becomes_a_voice_note_and_mode_a_text(
    clean_env: Path, tmp_path: Path
) -> None:
    """`/tts 开心：你好` → one `send` with a file (Opus 24 kHz mono in CAF, as FFmpeg's own
    demuxer reads it) while imsg's bridge is down; `/mode style` → a text send; the bot's own
    message is ignored."""
    imsg = Imsg(tmp_path / "imsg")
    imsg.incoming("/tts 我自己发的", is_from_me=True)
    async with running(clean_env, **imsg.env()) as (daemon, _):
        imsg.incoming("/mode style 温柔")
        imsg.incoming("/tts 开心：你好")
        await until(lambda: len(imsg.lines("sent.jsonl")) == 2)
        await im_settled(daemon, imsg)
    text, voice = imsg.lines("sent.jsonl")
    assert (text["method"], text["chat_id"], text["text"]) == ("send", 1, "已设置风格：温柔")
    assert voice["method"] == "send" and "as_voice" not in voice
    path = Path(voice["file"])
    assert describe(path) == ("caf", "opus", 48_000)  # FFmpeg decodes Opus at 48 kHz
    assert decode(path)[0].size > 0


async def test_imessage_unknown_method_is_an_error_not_a_crash(
    clean_env: Path, tmp_path: Path
) -> None:
    """imsg's JSON-RPC error comes back as an error; the channel keeps working."""
    from msgvoice.channels.imessage import RpcError  # noqa: PLC0415

    imsg = Imsg(tmp_path / "imsg")
    async with running(clean_env, **imsg.env()) as (daemon, _):
        (channel,) = daemon.channels
        await until(lambda: imsg.lines("subscribes.jsonl"))
        with pytest.raises(RpcError, match="Method not found"):
            await channel.request("chats.frobnicate", {})
        imsg.incoming("/help")
        await until(lambda: imsg.lines("sent.jsonl"))


async def test_imessage_death_mid_session_restarts_without_replay_or_loss(
    clean_env: Path, tmp_path: Path
) -> None:
    """imsg dying during a send is restarted (with back-off), resubscribes from the last rowid,
    and the unacknowledged reply is delivered exactly once; no message is handled twice."""
    imsg = Imsg(tmp_path / "imsg")
    async with running(clean_env, **imsg.env()) as (daemon, _):
        imsg.incoming("/help")
        await until(lambda: imsg.lines("sent.jsonl"))
        (imsg.dir / "die").touch()
        imsg.incoming("/mode")
        await until(lambda: len(imsg.lines("sent.jsonl")) == 2, within=30)
        await im_settled(daemon, imsg)
        assert daemon.channels[0].restarts >= 1
    sent = [s["text"] for s in imsg.lines("sent.jsonl")]
    assert sent[0].startswith("/tts 文本") and sent[1].startswith("语音模式")
    subscribes = imsg.lines("subscribes.jsonl")
    assert len(subscribes) >= 2 and subscribes[-1]["since_rowid"] == imsg.rowid


async def test_imessage_daemon_restart_resumes_from_the_saved_rowid(
    clean_env: Path, tmp_path: Path
) -> None:
    """A restarted daemon subscribes after the last handled rowid: no replays, no losses."""
    imsg = Imsg(tmp_path / "imsg")
    async with running(clean_env, **imsg.env()):
        imsg.incoming("/help")
        await until(lambda: imsg.lines("sent.jsonl"))
    imsg.incoming("/mode")  # arrives while the daemon is down
    async with running(clean_env, **imsg.env()) as (daemon, _):
        await until(lambda: len(imsg.lines("sent.jsonl")) == 2)
        await im_settled(daemon, imsg)
    assert len(imsg.lines("sent.jsonl")) == 2
    assert imsg.lines("subscribes.jsonl")[-1] == {"since_rowid": imsg.rowid - 1}


async def test_imessage_voice_bubbles_through_the_bridge(clean_env: Path, tmp_path: Path) -> None:
    """With imsg's IMCore bridge up (`imsg status --json`: advanced_features), voice notes go
    through `send.attachment` with `as_voice: true`, which marks them as audio messages."""
    voice = await one_voice_note(clean_env, Imsg(tmp_path / "imsg", "bridge"))
    assert voice["method"] == "send.attachment" and voice["as_voice"] is True
    assert describe(Path(voice["file"]))[:2] == ("caf", "opus")


async def test_imessage_failed_watch_restarts_and_the_next_message_is_answered(
    clean_env: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """imsg reports a failed watch as an `error` notification and keeps running: msgvoice
    ends that session (logged), restarts imsg, resubscribes from the journalled rowid, and the
    next message is answered; imsg's stderr is in msgvoice's log."""
    caplog.set_level(logging.INFO, logger="msgvoice")
    imsg = Imsg(tmp_path / "imsg", "watch-fails")
    async with running(clean_env, **imsg.env()) as (daemon, _):
        await until(lambda: len(imsg.lines("subscribes.jsonl")) >= 2)
        imsg.incoming("/help")
        await until(lambda: imsg.lines("sent.jsonl"))
        await im_settled(daemon, imsg)
    assert len(imsg.lines("starts.jsonl")) >= 2 and len(imsg.lines("sent.jsonl")) == 1
    assert "imsg's watch failed: SQLite error 10" in caplog.text
    assert "imsg: imsg rpc: listening on stdin" in caplog.text


async def test_imessage_send_that_timed_out_is_not_sent_twice(
    clean_env: Path, tmp_path: Path
) -> None:
    """A send whose answer comes after the request timeout may have gone out: before trying
    again msgvoice reads the chat's `messages.history`, finds it, and does not send it again."""
    imsg = Imsg(tmp_path / "imsg", "slow-send")
    async with running(clean_env, **imsg.env()) as (daemon, _):
        imsg.incoming("/help")
        await until(lambda: imsg.lines("history.jsonl"), within=30)
        await im_settled(daemon, imsg)
    assert len(imsg.lines("sent.jsonl")) == 1


async def test_imessage_unknown_chat_is_refused_and_others_go_on(
    clean_env: Path, tmp_path: Path
) -> None:
    """imsg's -32602 "unknown chat_id" fails that item for good (with imsg's `data` as the
    reason); the other chat is answered."""
    imsg = Imsg(tmp_path / "imsg")
    async with running(clean_env, **imsg.env()) as (daemon, client):
        imsg.incoming("/help", chat_id=666)
        imsg.incoming("/help", chat_id=2)
        await until(lambda: imsg.lines("sent.jsonl"))
        await im_settled(daemon, imsg)
        items = (await client.get("/v1/chats/im:666/outbox")).json()["items"]
    assert [s["chat_id"] for s in imsg.lines("sent.jsonl")] == [2]
    assert items[0]["state"] == "failed" and "unknown chat_id 666" in items[0]["error"]


async def test_imessage_without_full_disk_access_says_what_to_grant(
    clean_env: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When imsg cannot read chat.db, the log says to grant Full Disk Access to the program
    that starts imsg (this Python under launchd), by its path."""
    python = str(Path(sys.executable).resolve())  # noqa: ASYNC240 (a test's set-up)
    imsg = Imsg(tmp_path / "imsg", "no-fda")
    async with running(clean_env, **imsg.env()):
        await until(lambda: "Full Disk Access" in caplog.text)
    assert python in caplog.text
