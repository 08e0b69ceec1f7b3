"""Edges nobody listed: text with nothing to speak, an unreadable voice note, a flood of idle
connections under a small open-file limit, clients that hang up or send garbage, a small disk
shared by two workers."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import signal
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest

from msgvoice.chat import phrasebook
from msgvoice.chat.commands import STYLE_MAX_CHARS
from msgvoice.compose import DaemonParts
from msgvoice.net import tls
from tests.conftest import run_msgvoice, until
from tests.daemon_util import DaemonProcess, running, wait_job
from tests.fake_telegram import FakeTelegram
from tests.test_channels import tg_env, tg_settled
from tests.test_longevity import fill, small_filesystem

NOTHING = ["😀😀", "。。", "\u200b", "🎉！"]


def plant_unreadable_voice_note(daemon: DaemonParts, chat_id: str) -> None:
    """A finished job whose voice note is a 0-byte file (what an emoji-only /tts used to make)."""
    journal = daemon.journal
    job_id, _ = journal.add_job(chat_id, "tts", "😀", None)
    (daemon.journal.audio_dir / f"{job_id}.ogg").write_bytes(b"")
    job = journal.job(job_id)
    assert job is not None
    journal.finish(
        job, audio_name=f"{job_id}.ogg", audio_format="ogg", duration_s=1.0, emotion={},
        timings={}, engine="espeak",
    )  # fmt: skip


async def test_an_emoji_tts_or_an_unreadable_note_never_silences_telegram(
    clean_env: Path,
) -> None:
    """`/tts 😀😀` is answered with a short text (no job); an unreadable voice note in the same
    chat's outbox is marked failed with the reason; another chat is answered meanwhile, the
    same chat on its next /tts, and again after a restart of the daemon."""
    async with FakeTelegram() as bot:
        async with running(clean_env, **tg_env(bot)) as (daemon, _):
            bot.text(1, "/tts 😀😀")
            plant_unreadable_voice_note(daemon, "tg:1")
            bot.text(2, "/tts 你好")
            await until(lambda: bot.voices_to(2) == 1)
            bot.text(1, "/tts 晚安")
            await until(lambda: bot.voices_to(1) == 1)
            await tg_settled(daemon, bot)
            items = daemon.router.outbox("tg:1") or []
            assert not daemon.journal.counts().get("failed")
        async with running(clean_env, **tg_env(bot)) as (daemon, _):
            bot.text(1, "/tts 再见")
            await until(lambda: bot.voices_to(1) == 2)
            await tg_settled(daemon, bot)
    (failed,) = [i for i in items if i.state == "failed"]
    assert "cannot read" in (failed.error or "")
    texts = [m["text"] for m in bot.sent_by("sendMessage") if m["chat_id"] == "1"]
    assert texts == [phrasebook.text("nothing_to_speak")]


async def test_nothing_to_speak_is_refused_in_chat_say_and_the_speech_api(
    clean_env: Path, tmp_path: Path
) -> None:
    """Emoji, punctuation or invisible text: the chat gets a short reply and no job is
    journalled; `say` exits 2 with one line and writes no file; the speech API answers 400
    with `param: "input"` in every format (the openai client sees a BadRequestError)."""
    for text in NOTHING:
        out = tmp_path / "x.ogg"
        done = run_msgvoice("say", text, "-o", str(out))
        assert done.returncode == 2 and not out.exists(), (text, done.stderr)
        assert done.stderr.count("\n") == 1 and "nothing to speak" in done.stderr
    async with running(clean_env) as (daemon, client):
        for text in NOTHING:
            answer = await client.post(
                "/v1/messages", json={"chat_id": "n", "text": f"/tts {text}"}
            )
            assert answer.status_code == 202 and answer.json()["jobs"] == []
            assert answer.json()["replies"] == [phrasebook.text("nothing_to_speak")]
        assert not daemon.journal.counts()
        # Closed here: a client left to the garbage collector closes its connections on a later
        # test's loop, which logs "Event loop is closed" at ERROR in that test.
        async with openai.AsyncOpenAI(
            base_url=f"{client.base_url}/v1", api_key="x", max_retries=0
        ) as api:
            for text in NOTHING:
                for fmt in ("mp3", "opus", "aac", "flac", "wav", "pcm"):
                    with pytest.raises(openai.BadRequestError) as refused:
                        await api.audio.speech.create(
                            model="tts-1", voice="alloy", input=text, response_format=fmt
                        )
                    assert refused.value.body["param"] == "input"  # type: ignore[index]
        replied = await client.post("/v1/chats/n/replies", json={"text": "👍"})
        assert replied.json()["jobs"] == [] and replied.json()["replies"] == ["👍"]


async def test_a_long_style_is_refused_with_its_limit(clean_env: Path) -> None:
    """`/mode style` with more than STYLE_MAX_CHARS characters is not stored or echoed: the
    reply names the limit."""
    async with running(clean_env) as (daemon, client):
        body = {"chat_id": "s", "text": "/mode style " + "温柔" * 5_000}
        reply = (await client.post("/v1/messages", json=body)).json()["replies"][0]
        assert daemon.journal.chat("s").style is None
    assert str(STYLE_MAX_CHARS) in reply and len(reply) < 100


def test_idle_connections_under_a_small_file_limit_cost_nothing(tmp_path: Path) -> None:
    """`ulimit -n 256` (launchd's default for an agent) and 300 idle connections: the daemon
    still answers /healthz and speaks every accepted /tts, and its log stays small."""
    state = tmp_path / "state"
    daemon = DaemonProcess(state)

    def small_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    daemon.start(preexec=small_limit)
    idle: list[socket.socket] = []
    try:
        jobs = []
        for n in range(300):
            idle.append(socket.create_connection(("127.0.0.1", daemon.port)))
            if n % 60 == 0:
                posted = httpx.post(
                    daemon.url + "/v1/messages",
                    json={"chat_id": f"u{n}", "text": "/tts 你好"},
                    verify=tls(),
                )
                jobs.append(posted.json()["jobs"][0])
        assert httpx.get(daemon.url + "/healthz", timeout=10, verify=tls()).status_code == 200
        deadline = time.monotonic() + 60
        for job_id in jobs:
            while (
                httpx.get(f"{daemon.url}/v1/jobs/{job_id}?wait=5", verify=tls()).json()["state"]
                != "done"
            ):
                assert time.monotonic() < deadline
    finally:
        for sock in idle:
            sock.close()
        daemon.signal(signal.SIGTERM)
    log = Path(str(state) + ".log").read_text()
    assert len(log) < 50_000 and "Traceback" not in log and "Errno 24" not in log


async def test_healthz_that_cannot_read_its_facts_says_so_without_a_5xx(clean_env: Path) -> None:
    """/healthz whose facts cannot be read (out of files in /proc) answers 200, degraded, with
    the reason."""
    async with running(clean_env) as (daemon, client):

        def out_of_files() -> dict[str, object]:
            raise OSError(errno.EMFILE, "Too many open files")

        daemon.http.health = out_of_files
        answer = await client.get("/healthz")
    assert answer.status_code == 200 and answer.json()["status"] == "degraded"
    assert "Too many open files" in answer.json()["reason"]


async def test_a_stalled_body_is_a_408_and_an_idle_connection_is_closed(clean_env: Path) -> None:
    """A request whose body stops arriving is answered 408 after `http.body_timeout_s`; a
    connection that never sends a request is closed after `http.idle_timeout_s`."""
    env = {"MSGVOICE_HTTP_BODY_TIMEOUT_S": "1", "MSGVOICE_HTTP_IDLE_TIMEOUT_S": "1"}
    async with running(clean_env, **env) as (daemon, _):
        port = daemon.http.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
        await writer.drain()
        async with asyncio.timeout(10):
            status = await reader.readline()
        writer.close()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            closed = await idle_reader.read()  # b"" once the daemon closes it
        idle_writer.close()
    assert status.split()[1] == b"408" and closed == b""


async def test_clients_that_hang_up_or_send_garbage_cost_no_worker_and_no_error(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty clients that hang up during a long /v1/audio/speech, a header with a NUL byte, a
    body cut short: no worker is restarted, nothing is logged at ERROR, the next request is
    served by the same worker."""
    async with running(clean_env) as (daemon, client):
        pid = daemon.kit.workers[0].pid
        text = "今天天气很好，我们一起去公园散步吧。" * 30
        port = daemon.http.port

        async def hang_up() -> None:
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=0.3, verify=tls()) as quick:
                    await quick.post(
                        f"http://127.0.0.1:{port}/v1/audio/speech",
                        json={"model": "tts-1", "input": text, "voice": "alloy"},
                    )

        await asyncio.gather(*(hang_up() for _ in range(20)))
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
        await writer.drain()
        writer.close()
        await until(lambda: not daemon.lane.running_jobs())
        posted = await client.post("/v1/messages", json={"chat_id": "h", "text": "/tts 好"})
        job = await wait_job(client, posted.json()["jobs"][0], within=120)
        workers = daemon.kit.workers
        assert job["state"] == "done" and workers[0].pid == pid
        assert sum(sum(w.restarts.values()) for w in workers) == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_small_full_disk_shared_by_two_workers_recovers(tmp_path: Path) -> None:
    """Two workers, a 16 MB state dir filled up: long jobs in two chats wait (no half-written
    audio anywhere holds the disk), and once space is freed both are delivered."""
    with small_filesystem(tmp_path / "small", 16) as root:
        state = root / "state"
        env = {
            "MSGVOICE_RETENTION_MIN_FREE_MB": "0.01",
            "MSGVOICE_TTS_FORMAT": "wav",
            "MSGVOICE_WORKER_COUNT": "2",
        }
        async with running(state, **env) as (daemon, client):
            warm = await client.post("/v1/messages", json={"chat_id": "w", "text": "/tts 热身"})
            await wait_job(client, warm.json()["jobs"][0])
            filler = fill(root, leave_kb=64)
            text = "今天天气很好，我们一起去公园散步吧。" * 20
            ids = []
            for chat in ("a", "b"):
                posted = await client.post(
                    "/v1/messages", json={"chat_id": chat, "text": f"/tts {text}"}
                )
                ids += posted.json()["jobs"]
            await until(lambda: daemon.storage.full)
            await until(lambda: not daemon.lane.running_jobs())
            leftovers = [p for p in state.rglob("*") if p.suffix in (".part", ".f32")]
            assert not leftovers
            filler.unlink()
            jobs = [await wait_job(client, job_id) for job_id in ids]
    assert [j["state"] for j in jobs] == ["done", "done"]
