"""Failure is contained by construction: each boundary (a channel's send, the encoder, the
journal's write, the worker, the LLM client) made to fail in turn, with an exception nobody
listed and with the OS errors a machine really gives (EIO, ENOSPC, EMFILE). Each time the
daemon stays up, another chat is served, the failing item ends visibly (failed, with a reason)
or waits and recovers, and nothing is sent twice."""

from __future__ import annotations

import errno
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from msgvoice.channels.outbox import OutboxPump
from msgvoice.chat.port import OutboxItem
from msgvoice.compose import DaemonParts
from msgvoice.sound.encoder import Encoder
from msgvoice.sound.files import AudioWriter, write_file
from msgvoice.speech import sinks as sinks_module
from msgvoice.speech import speaker as speaker_module
from tests.conftest import until
from tests.daemon_util import FAULT_ENGINE, running, wait_job
from tests.fake_telegram import FakeTelegram
from tests.test_channels import tg_env, tg_settled

FAULTS: dict[str, Callable[[], Exception]] = {
    "unexpected": lambda: RuntimeError("a bug nobody listed"),
    "eio": lambda: OSError(errno.EIO, "Input/output error"),
    "enospc": lambda: OSError(errno.ENOSPC, "No space left on device"),
    "emfile": lambda: OSError(errno.EMFILE, "Too many open files"),
}


async def test_a_send_that_raises_anything_holds_only_its_item(clean_env: Path) -> None:
    """Each chat's sends raise one kind of fault: the unexpected one fails its item after
    three tries (reason in the outbox), the OS errors heal and their items go out exactly
    once; a healthy chat is answered all along, and polling never stops."""
    async with FakeTelegram() as bot, running(clean_env, **tg_env(bot)) as (daemon, _):
        (channel,) = daemon.channels
        pump: OutboxPump = channel.pump  # type: ignore[attr-defined]
        real_send = pump.send
        chats = {n: kind for n, kind in enumerate(FAULTS, 1)}
        tries: Counter[str] = Counter()

        async def faulty(item: OutboxItem) -> None:
            kind = chats.get(int(item.chat_id[3:]))
            if kind is not None and item.kind == "audio":
                tries[kind] += 1
                if kind == "unexpected" or tries[kind] <= 2:
                    raise FAULTS[kind]()
            await real_send(item)

        pump.send = faulty
        bot.text(99, "/tts 我没事")  # first: once ENOSPC marks the state dir full, new work waits
        for n in chats:
            bot.text(n, "/tts 你好")
        await until(lambda: bot.voices_to(99) == 1)
        await until(
            lambda: all(bot.voices_to(n) == 1 for n, k in chats.items() if k != "unexpected")
        )
        failed = await _failed_items(daemon, "tg:1")
        await until(lambda: not daemon.storage.full)  # ENOSPC marked it; it found room
        bot.text(99, "/tts 还在听")  # intake never stopped
        await until(lambda: bot.voices_to(99) == 2)
        await tg_settled(daemon, bot)
    assert tries["unexpected"] == 3
    assert "RuntimeError: a bug nobody listed" in (failed[0].error or "")
    assert [bot.voices_to(n) for n in chats] == [0, 1, 1, 1]  # each exactly once
    assert daemon.router.refused == 1


async def _failed_items(daemon: DaemonParts, chat: str) -> list[OutboxItem]:
    def failed() -> list[OutboxItem]:
        return [i for i in daemon.router.outbox(chat) or [] if i.state == "failed"]

    await until(failed, within=20)
    return failed()


async def test_jobs_whose_encoder_fails_give_their_turn_back(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More jobs of several segments, in a format encoded in the daemon (FLAC), than there are
    encode turns (sinks.ENCODES_AT_ONCE), one after another, each failing in its encoder:
    every one fails with the reason, and a job of several segments asked after them is still
    encoded and done."""
    failing = sinks_module.ENCODES_AT_ONCE + 1
    opened: list[str] = []

    class Faulty(AudioWriter):
        def feed(self, samples: Any) -> bytes:
            if len(opened) <= failing:
                raise RuntimeError("the encoder broke")
            return super().feed(samples)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(str(args[0]))

    monkeypatch.setattr(speaker_module, "AudioWriter", Faulty)
    env = {"MSGVOICE_TEXT_SEGMENT_CHARS": "4", "MSGVOICE_TTS_FORMAT": "flac"}
    async with running(clean_env, **env) as (_, client):
        states = []
        for n in range(failing + 1):
            asked = await client.post(
                "/v1/messages", json={"chat_id": f"c{n}", "text": "/tts 坏了。真的坏了。"}
            )
            states.append((await wait_job(client, asked.json()["jobs"][0], within=20))["state"])
    assert states == ["failed"] * failing + ["done"] and len(opened) == failing + 1


@pytest.mark.parametrize("kind", list(FAULTS))
@pytest.mark.parametrize("where", ["file", "encoder", "joining"])
async def test_an_audio_write_fault_fails_or_parks_its_job_and_the_next_goes_on(
    clean_env: Path, kind: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing one job's voice note raises: where a one-segment job's finished output (from
    its worker) becomes a file; in the encoder of a job of several segments in a format
    encoded in the daemon (FLAC); or where a job of several segments in Opus has its
    segments' packets, encoded apart by the workers, put into one stream. An exhausted
    resource (ENOSPC, EMFILE) parks that job until the state dir takes writes again, then it
    is delivered; any other fault fails that job with the reason; the next job of another
    chat is done either way."""
    fired: list[str] = []

    def fire(place: str) -> None:
        if not fired:  # the first voice note written: chat a's
            fired.append(place)
            raise FAULTS[kind]()

    class Faulty(AudioWriter):
        def feed(self, samples: Any) -> bytes:
            fire("encoder")
            return super().feed(samples)

    class Joining(Encoder):
        def join(self, packets: bytes) -> bytes:
            fire("joining")
            return super().join(packets)

    def faulty_write(path: Path, data: bytes) -> Path:
        fire("file")
        return write_file(path, data)

    monkeypatch.setattr(speaker_module, "AudioWriter", Faulty)
    monkeypatch.setattr(speaker_module, "Encoder", Joining)
    monkeypatch.setattr(sinks_module, "write_file", faulty_write)
    # Segments of a few characters: "坏了。真的坏了。" is two, "坏了" one.
    text = "坏了" if where == "file" else "坏了。真的坏了。"
    env = {"MSGVOICE_TEXT_SEGMENT_CHARS": "4", "MSGVOICE_TTS_FORMAT": "flac"}
    if where != "encoder":
        del env["MSGVOICE_TTS_FORMAT"]  # Ogg/Opus, the default
    async with running(clean_env, **env) as (daemon, client):
        bad = await client.post("/v1/messages", json={"chat_id": "a", "text": f"/tts {text}"})
        job = await wait_job(client, bad.json()["jobs"][0])
        good = await client.post("/v1/messages", json={"chat_id": "b", "text": "/tts 好的"})
        other = await wait_job(client, good.json()["jobs"][0])
        restarts = dict(daemon.task_restarts)
    assert fired == [where] and other["state"] == "done" and not restarts
    if kind in ("enospc", "emfile"):
        assert job["state"] == "done" and daemon.storage.times_full == 1  # waited, recovered
    else:
        assert job["state"] == "failed" and FAULTS[kind]().args[-1] in job["error"]


@pytest.mark.parametrize(
    "error",
    [
        sqlite3.OperationalError("disk I/O error"),
        sqlite3.OperationalError("database or disk is full"),
        RuntimeError("a bug nobody listed"),
    ],
    ids=["eio", "full", "unexpected"],
)
async def test_a_journal_write_that_fails_ends_visibly_or_waits(
    clean_env: Path, error: Exception
) -> None:
    """The journal refuses to record one finished job: a full database parks the job and it is
    delivered after; any other error fails it with the reason; the lane keeps serving."""
    async with running(clean_env) as (daemon, client):
        journal = daemon.journal
        real_finish = journal.finish
        fired: list[str] = []

        def finish(job: Any, **kwargs: Any) -> bool:
            if job.chat_id == "a" and not fired:
                fired.append(job.id)
                raise error
            return real_finish(job, **kwargs)

        journal.finish = finish  # type: ignore[method-assign]
        bad = await client.post("/v1/messages", json={"chat_id": "a", "text": "/tts 一"})
        job = await wait_job(client, bad.json()["jobs"][0])
        good = await client.post("/v1/messages", json={"chat_id": "b", "text": "/tts 二"})
        other = await wait_job(client, good.json()["jobs"][0])
    assert fired and other["state"] == "done"
    if "full" in str(error):
        assert job["state"] == "done"
    else:
        assert job["state"] == "failed" and str(error) in job["error"]


@pytest.mark.parametrize("directive", ["[oserror:5]", "[oserror:28]", "[oserror:24]", "[error]"])
async def test_a_worker_fault_fails_its_job_and_keeps_the_worker(
    clean_env: Path, directive: str
) -> None:
    """The engine's own I/O fails inside the worker (EIO, ENOSPC, EMFILE) or it refuses the
    text: that job fails with the reason, the same worker (same pid) speaks the next one."""
    env = {"MSGVOICE_TTS_ENGINE": FAULT_ENGINE, "MSGVOICE_WORKER_COUNT": "1"}
    async with running(clean_env, **env) as (daemon, client):
        pid = daemon.kit.workers[0].pid
        bad = await client.post(
            "/v1/messages", json={"chat_id": "a", "text": f"/tts 平静：{directive}x"}
        )
        job = await wait_job(client, bad.json()["jobs"][0])
        good = await client.post("/v1/messages", json={"chat_id": "b", "text": "/tts ok"})
        other = await wait_job(client, good.json()["jobs"][0])
        assert daemon.kit.workers[0].pid == pid
        assert sum(daemon.kit.workers[0].restarts.values()) == 0
    assert job["state"] == "failed" and job["error"] and other["state"] == "done"


@pytest.mark.parametrize("kind", list(FAULTS))
async def test_an_llm_client_fault_falls_back_to_the_lexicon(clean_env: Path, kind: str) -> None:
    """The emotion analyser raises (a bug, EIO, ENOSPC, EMFILE): the job is spoken with the
    lexicon's emotion for its style, not failed."""
    async with running(clean_env) as (daemon, client):

        async def broken(style: str | None, segments: Any) -> Any:
            raise FAULTS[kind]()

        daemon.kit.speaker.emotions.analyse = broken
        posted = await client.post("/v1/messages", json={"chat_id": "a", "text": "/tts 开心：好"})
        job = await wait_job(client, posted.json()["jobs"][0])
    assert job["state"] == "done" and job["emotion"]["source"] == "lexicon"


@pytest.mark.parametrize("kind", ["enospc", "emfile"])
async def test_an_answer_that_meets_a_full_disk_is_asked_again_not_dropped(
    clean_env: Path, kind: str
) -> None:
    """Handing the responder's answer on fails with an exhausted resource: the question stays
    journalled, the state dir is marked full until writes work, and the chat then gets its
    answer exactly once."""
    from tests.fake_llm import FakeLLM, Reply  # noqa: PLC0415

    env = {"MSGVOICE_RESPONDER_MODEL": "chat"}
    async with FakeLLM([Reply("好的。"), Reply("好的。")]) as llm:
        env["MSGVOICE_RESPONDER_BASE_URL"] = llm.url
        async with running(clean_env, **env) as (daemon, client):
            conversations = daemon.router.conversations
            assert conversations is not None
            real_reply, failures = conversations.reply, []

            def reply(chat_id: str, text: str) -> Any:
                if not failures:
                    failures.append(chat_id)
                    raise FAULTS[kind]()
                return real_reply(chat_id, text)

            conversations.reply = reply
            await client.post("/v1/messages", json={"chat_id": "a", "text": "在吗？"})
            items = (await client.get("/v1/chats/a/outbox?wait=30")).json()["items"]
            await until(lambda: not conversations.waiting())
    assert failures == ["a"] and [i["text"] for i in items] == ["好的。"]
    assert len(llm.requests) == 2  # asked again once there was room
