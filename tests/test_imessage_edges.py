"""iMessage at its edges, against the fake imsg (tests/fake_imsg.py, after imsg's own sources):
a bridge whose lock file lies, a bridge that breaks mid-session, errors that never heal."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import until
from tests.daemon_util import running
from tests.test_channels import Imsg, im_settled, one_voice_note


async def test_a_stale_bridge_is_not_used(clean_env: Path, tmp_path: Path) -> None:
    """`advanced_features` true from a stale lock file but no live answer (`v2_ready` false):
    voice notes go out with `send` and a file, never `send.attachment`."""
    voice = await one_voice_note(clean_env, Imsg(tmp_path / "imsg", "stale-bridge"))
    assert voice["method"] == "send" and "as_voice" not in voice and voice["file"]


async def test_a_bridge_that_breaks_falls_back_to_send(clean_env: Path, tmp_path: Path) -> None:
    """The bridge answered the probe, then fails at `send.attachment`: that voice note and the
    next go out with `send` and the file, none is lost or held."""
    imsg = Imsg(tmp_path / "imsg", "bridge", "bridge-breaks")
    async with running(clean_env, **imsg.env()) as (daemon, _):
        imsg.incoming("/tts 你好")
        await until(lambda: imsg.lines("sent.jsonl"))
        imsg.incoming("/tts 晚安")
        await until(lambda: len(imsg.lines("sent.jsonl")) == 2)
        await im_settled(daemon, imsg)
    assert [s["method"] for s in imsg.lines("sent.jsonl")] == ["send", "send"]
    assert daemon.router.refused == 0


async def test_attachment_not_found_fails_that_item_and_the_next_text_arrives(
    clean_env: Path, tmp_path: Path
) -> None:
    """ "Attachment not found" (-32603) is that voice note's end, not a retry for ever: it is
    marked failed and the chat's next message (a text) is delivered."""
    imsg = Imsg(tmp_path / "imsg", "attachment-gone")
    async with running(clean_env, **imsg.env()) as (daemon, client):
        imsg.incoming("/tts 你好")
        await until(lambda: [i for i in daemon.journal.outbox("im:1") if i.kind == "audio"])
        imsg.incoming("/mode style 温柔")  # after the voice note, in the same chat
        await until(lambda: imsg.lines("sent.jsonl"))
        await im_settled(daemon, imsg)
        items = (await client.get("/v1/chats/im:1/outbox")).json()["items"]
    assert [s.get("text") for s in imsg.lines("sent.jsonl")] == ["已设置风格：温柔"]
    failed = [i for i in items if i["state"] == "failed"]
    assert len(failed) == 1 and "Attachment not found" in failed[0]["error"]


async def test_a_row_without_a_chat_is_passed_over(clean_env: Path, tmp_path: Path) -> None:
    """imsg gives `chat_id` 0 to a row it could not join to a chat: it is not a chat (nothing
    is answered or journalled for it), and the next message is handled as usual."""
    imsg = Imsg(tmp_path / "imsg")
    async with running(clean_env, **imsg.env()) as (daemon, _):
        imsg.incoming("/help", chat_id=0)
        imsg.incoming("/mode style 温柔", chat_id=2)
        await until(lambda: imsg.lines("sent.jsonl"))
        await im_settled(daemon, imsg)
        assert not daemon.journal.known_chat("im:0")
    assert [s["chat_id"] for s in imsg.lines("sent.jsonl")] == [2]


async def test_a_send_that_timed_out_is_remembered_across_a_restart(
    clean_env: Path, tmp_path: Path
) -> None:
    """The daemon stops right after a send timed out (imsg had sent it): the next daemon
    looks in the chat's history first and does not send it again."""
    imsg = Imsg(tmp_path / "imsg", "slow-send")
    async with running(clean_env, **imsg.env()) as (daemon, _):
        imsg.incoming("/help")
        await until(lambda: daemon.journal.cursor("imessage.timed_out:im:1:1"), within=30)
    async with running(clean_env, **imsg.env()) as (daemon, _):
        await until(lambda: imsg.lines("history.jsonl"), within=30)
        await im_settled(daemon, imsg)
    assert len(imsg.lines("sent.jsonl")) == 1


async def test_missing_full_disk_access_is_said_once_per_episode(
    clean_env: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """imsg restarted again and again without Full Disk Access: the fix is logged once, not
    at every restart."""
    imsg = Imsg(tmp_path / "imsg", "no-fda")
    async with running(clean_env, **imsg.env()):
        await until(lambda: len(imsg.lines("starts.jsonl")) >= 3)
    told = [r for r in caplog.records if "cannot read chat.db" in r.getMessage()]
    assert len(told) == 1


async def test_rows_handed_over_again_are_not_handled_twice(
    clean_env: Path, tmp_path: Path
) -> None:
    """Rows still queued when imsg restarted come again from the new session: a row at or
    below the journalled rowid is passed over, and the rowid never steps back."""
    imsg = Imsg(tmp_path / "imsg")
    async with running(clean_env, **imsg.env()) as (daemon, _):
        (channel,) = daemon.channels
        await until(lambda: channel.imsg is not None)
        imsg.incoming("/mode style 温柔")  # row 101, through imsg
        await until(lambda: imsg.lines("sent.jsonl"))
        row = {"chat_id": 1, "sender": "+15550001", "is_from_me": False, "text": "/help"}
        for rowid in (101, 99, 101):  # what a new session hands over again
            channel._messages.put_nowait({**row, "id": rowid})
        imsg.incoming("/mode")  # row 102
        await until(lambda: len(imsg.lines("sent.jsonl")) >= 2)
        await im_settled(daemon, imsg)
        assert daemon.journal.cursor("imessage.rowid") == "102"
    assert [s["text"].split("：")[0] for s in imsg.lines("sent.jsonl")] == [
        "已设置风格",
        "语音模式",
    ]
