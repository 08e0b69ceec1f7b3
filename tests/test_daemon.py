"""The daemon end to end over real sockets: lanes, latest-wins, journal, restarts, shutdown."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import soundfile as sf

from msgvoice.net import tls
from tests.conftest import run_msgvoice, until
from tests.daemon_util import FAULT_ENGINE, DaemonProcess, outbox, running, wait_job
from tests.fake_llm import FakeLLM, Reply

SLOW = {"MSGVOICE_TTS_ENGINE": FAULT_ENGINE, "FAULT_DELAY_S": "0.2"}


async def test_tts_reply_is_a_playable_voice_note(clean_env: Path) -> None:
    """`/tts 开心：你好` gives a job that finishes with an OGG/Opus file served over HTTP."""
    async with running(clean_env) as (_, client):
        answer = await client.post(
            "/v1/messages", json={"chat_id": "c1", "text": "/tts 开心：你好"}
        )
        assert answer.status_code == 202
        body = answer.json()
        assert body["replies"] == [] and len(body["jobs"]) == 1 and body["message_id"]
        job = await wait_job(client, body["jobs"][0])
        assert job["state"] == "done" and job["kind"] == "tts" and job["style"] == "开心"
        assert job["emotion"]["source"] == "lexicon" and len(job["emotion"]["vector"]) == 8
        assert job["audio"]["format"] == "ogg" and job["audio"]["duration_s"] > 0.2
        audio = await client.get(job["audio"]["url"])
        assert audio.status_code == 200 and audio.headers["Content-Type"] == "audio/ogg"
        path = clean_env / "fetched.ogg"
        path.write_bytes(audio.content)
        assert sf.info(str(path)).subtype == "OPUS"
        items = await outbox(client, "c1")
        assert [i["kind"] for i in items] == ["audio"] and items[0]["job_id"] == job["id"]


async def test_tts_jobs_are_delivered_in_the_order_asked(clean_env: Path) -> None:
    """Five /tts messages sent at once come back as five voice notes in the same order."""
    async with running(clean_env, **SLOW) as (_, client):
        jobs = []
        for i in range(5):
            reply = await client.post(
                "/v1/messages", json={"chat_id": "c", "text": f"/tts 第{i}条"}
            )
            jobs += reply.json()["jobs"]
        for job in jobs:
            assert (await wait_job(client, job))["state"] == "done"
        delivered = [i["job_id"] for i in await outbox(client, "c") if i["kind"] == "audio"]
    assert delivered == jobs


async def test_burst_of_auto_replies_delivers_only_each_chats_latest(clean_env: Path) -> None:
    """10 bot replies to one chat and 1 to another: one voice note per chat, for the last text;
    queued stale replies never run, and at most one stale reply ran per chat."""
    # Each job takes 1 s, so the whole burst lands while the first reply is being spoken.
    slower = {**SLOW, "FAULT_DELAY_S": "1.0"}
    async with running(clean_env, **slower) as (daemon, client):
        for chat in ("a", "b"):
            await client.post("/v1/messages", json={"chat_id": chat, "text": "/mode voice on"})
        jobs = {"a": [], "b": []}
        for i in range(10):
            reply = await client.post("/v1/chats/a/replies", json={"text": f"回复{i}。"})
            jobs["a"] += reply.json()["jobs"]
        reply = await client.post("/v1/chats/b/replies", json={"text": "只有一条。"})
        jobs["b"] += reply.json()["jobs"]
        finals = {c: [await wait_job(client, j) for j in ids] for c, ids in jobs.items()}
        for chat, last_text in (("a", "回复9。"), ("b", "只有一条。")):
            audio = [i for i in await outbox(client, chat) if i["kind"] == "audio"]
            assert len(audio) == 1
            assert audio[0]["job_id"] == jobs[chat][-1]
            assert finals[chat][-1]["state"] == "done" and finals[chat][-1]["text"] == last_text
            ran_stale = [j for j in finals[chat] if j["state"] == "superseded" and j["timings"]]
            assert len(ran_stale) <= 1
        assert all(j["state"] == "superseded" for j in finals["a"][:-1])
        texts = [i["text"] for i in await outbox(client, "a") if i["kind"] == "text"]
        assert texts[-10:] == [f"回复{i}。" for i in range(10)]  # both: text first, every one
        leftover = sorted(p.name for p in (clean_env / "audio").iterdir())
        assert leftover == sorted(f"{jobs[c][-1]}.ogg" for c in jobs)  # stale audio deleted
        assert daemon.router.superseded_at_submit >= 8


async def test_voice_modes_decide_what_a_bot_reply_becomes(clean_env: Path) -> None:
    """text: only text; audio: a placeholder then the voice note; both: text then voice."""
    async with running(clean_env) as (_, client):
        expected = {"text": ["text"], "audio": ["text", "audio"], "both": ["text", "audio"]}
        for mode, kinds in expected.items():
            chat = f"m-{mode}"
            await client.post("/v1/messages", json={"chat_id": chat, "text": f"/mode voice {mode}"})
            reply = (await client.post(f"/v1/chats/{chat}/replies", json={"text": "晚安。"})).json()
            for job in reply["jobs"]:
                await wait_job(client, job)
            items = (await outbox(client, chat))[1:]  # after the mode confirmation
            assert [i["kind"] for i in items] == kinds, mode
            first = items[0]["text"]
            assert first == ("正在生成语音…" if mode == "audio" else "晚安。")


async def test_settings_survive_a_restart(clean_env: Path) -> None:
    """/mode voice audio and /mode style are still set after the daemon restarts."""
    async with running(clean_env) as (_, client):
        await client.post("/v1/messages", json={"chat_id": "p", "text": "/mode voice audio"})
        await client.post("/v1/messages", json={"chat_id": "p", "text": "/mode style 撒娇"})
    async with running(clean_env) as (_, client):
        reply = await client.post("/v1/messages", json={"chat_id": "p", "text": "/mode"})
    assert reply.json()["replies"] == ["语音模式：仅语音；风格：撒娇；引擎：espeak"]


async def test_chat_style_applies_to_tts_and_a_one_off_style_wins(clean_env: Path) -> None:
    """A chat's style is used by /tts; a `风格：` prefix overrides it for one message."""
    async with running(clean_env) as (_, client):
        await client.post("/v1/messages", json={"chat_id": "s", "text": "/mode style 难过"})
        sad = (await client.post("/v1/messages", json={"chat_id": "s", "text": "/tts 好"})).json()
        angry = (
            await client.post("/v1/messages", json={"chat_id": "s", "text": "/tts 生气：好"})
        ).json()
        assert (await wait_job(client, sad["jobs"][0]))["style"] == "难过"
        assert (await wait_job(client, angry["jobs"][0]))["style"] == "生气"


async def test_responder_answers_plain_messages_when_configured(clean_env: Path) -> None:
    """With [responder] set, an ordinary message gets the model's answer in the chat's outbox
    (text, then its voice note with voice on), asked with a token budget."""
    async with (
        FakeLLM([Reply("今天是晴天。")]) as llm,
        running(
            clean_env, MSGVOICE_RESPONDER_BASE_URL=llm.url, MSGVOICE_RESPONDER_MODEL="chat"
        ) as (_, client),
    ):
        await client.post("/v1/messages", json={"chat_id": "r", "text": "/mode voice on"})
        answer = (await client.post("/v1/messages", json={"chat_id": "r", "text": "天气？"})).json()
        assert answer["replies"] == [] and answer["jobs"] == []  # the answer comes later
        items = (await client.get("/v1/chats/r/outbox?after=1&wait=30")).json()["items"]
        assert items[0]["text"] == "今天是晴天。"
        await until(async_audio(client, "r"))
    assert llm.requests[0]["messages"][-1]["content"] == "天气？"
    assert llm.requests[0]["max_tokens"] == 400


def async_audio(client: httpx.AsyncClient, chat: str) -> Any:
    """A probe for `until`: whether the chat's outbox holds a voice note yet."""

    async def probe() -> bool:
        return any(item["kind"] == "audio" for item in await outbox(client, chat))

    return probe


async def test_without_responder_plain_messages_get_no_reply(clean_env: Path) -> None:
    """Ordinary chat text is not answered unless a responder is configured."""
    async with running(clean_env) as (_, client):
        answer = (await client.post("/v1/messages", json={"chat_id": "q", "text": "你好"})).json()
    assert answer["jobs"] == [] and answer["replies"] == []


async def test_worker_failure_becomes_a_clear_message_in_the_chat(clean_env: Path) -> None:
    """A job the worker cannot do fails with a reason, and the chat is told in words."""
    async with running(clean_env, MSGVOICE_TTS_ENGINE=FAULT_ENGINE) as (_, client):
        reply = await client.post("/v1/messages", json={"chat_id": "f", "text": "/tts [error] x"})
        job = await wait_job(client, reply.json()["jobs"][0])
        assert job["state"] == "failed" and "refused" in job["error"] and job["audio"] is None
        items = await outbox(client, "f")
        assert items[-1]["kind"] == "text" and items[-1]["text"].startswith("语音生成失败")


def _settled(health: dict[str, Any]) -> bool:
    """No job is queued or running in the journal."""
    return not {"queued", "running"} & set(health["jobs"])


def _jobs_for(url: str, chats: list[str]) -> dict[str, list[dict]]:
    out = {}
    for chat in chats:
        items = httpx.get(f"{url}/v1/chats/{chat}/outbox", timeout=5, verify=tls()).json()["items"]
        out[chat] = [i for i in items if i["kind"] == "audio"]
    return out


@pytest.mark.slow
def test_sigkill_mid_burst_then_restart_delivers_each_latest_exactly_once(clean_env: Path) -> None:
    """Kill -9 the daemon during a burst; the restarted daemon delivers every chat's latest
    reply exactly once, and the killed daemon's worker does not outlive it."""
    env = {"MSGVOICE_TTS_ENGINE": FAULT_ENGINE, "FAULT_DELAY_S": "0.5"}
    first = DaemonProcess(clean_env, **env).start()
    chats = ["x", "y", "z"]
    latest = {}
    with httpx.Client(base_url=first.url, timeout=10, verify=tls()) as client:
        for chat in chats:
            client.post("/v1/messages", json={"chat_id": chat, "text": "/mode voice audio"})
        for i in range(4):
            for chat in chats:
                latest[chat] = client.post(
                    f"/v1/chats/{chat}/replies", json={"text": f"{chat} 第{i}次。"}
                ).json()["jobs"][0]
        first.wait_health(lambda health: health["running"] is not None)  # mid-job now
        worker = psutil.Process(first.worker_pid())
    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    psutil.wait_procs([worker], timeout=10)
    assert not worker.is_running()
    second = DaemonProcess(clean_env, **env).start()
    try:
        # Once no job is open, no more audio can be delivered: what is there is final.
        second.wait_health(lambda h: h["running"] is None and h["queue"] == 0 and _settled(h))
        delivered = _jobs_for(second.url, chats)
        for chat in chats:
            assert [i["job_id"] for i in delivered[chat]] == [latest[chat]], chat
    finally:
        second.signal(signal.SIGTERM)


def test_sigterm_drains_and_leaves_no_worker(clean_env: Path) -> None:
    """SIGTERM while a job runs: the daemon finishes it, exits 0, and its worker is gone."""
    daemon = DaemonProcess(clean_env, MSGVOICE_TTS_ENGINE=FAULT_ENGINE, FAULT_DELAY_S="0.8").start()
    job = httpx.post(
        daemon.url + "/v1/messages",
        json={"chat_id": "t", "text": "/tts 再见"},
        timeout=5,
        verify=tls(),
    ).json()["jobs"][0]
    daemon.wait_health(lambda health: health["running"] == job)
    worker = psutil.Process(daemon.worker_pid())
    assert daemon.signal(signal.SIGTERM) == 0
    _gone, alive = psutil.wait_procs([worker], timeout=10)
    assert not alive
    import sqlite3  # noqa: PLC0415 (read the journal the daemon left)

    with sqlite3.connect(clean_env / "msgvoice.sqlite3") as db:
        state = db.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone()[0]
    assert state == "done"


def test_console_channel_speaks_and_prints_the_path(clean_env: Path, tmp_path: Path) -> None:
    """`msgvoice run --console` answers commands and prints the voice note's path."""
    from tests.daemon_util import free_port  # noqa: PLC0415

    done = run_msgvoice(
        "run",
        "--console",
        env={"MSGVOICE_HTTP_PORT": str(free_port())},
        input="/mode style 温柔\n/tts 晚安\n",
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "已设置风格：温柔" in done.stdout
    voice = [line for line in done.stdout.splitlines() if "[语音]" in line]
    assert len(voice) == 1
    path = Path(voice[0].split("] ", 1)[1].rsplit(" (", 1)[0])
    assert path.parent == clean_env / "audio" and sf.info(str(path)).duration > 0.3


async def test_metrics_count_jobs_and_show_worker_facts(clean_env: Path) -> None:
    """/metrics counts jobs by kind and outcome and exposes every worker's restarts and
    memory."""
    async with running(clean_env, MSGVOICE_WORKER_COUNT="2") as (_, client):
        job = (await client.post("/v1/messages", json={"chat_id": "m", "text": "/tts 你好"})).json()
        await wait_job(client, job["jobs"][0])  # the metrics listener runs before "done" shows
        text = (await client.get("/metrics")).text
    assert 'msgvoice_jobs_total{kind="tts",outcome="done"} 1.0' in text
    for worker in ("0", "1"):
        assert f'msgvoice_worker_restarts_total{{reason="crash",worker="{worker}"}} 0.0' in text
        assert f'msgvoice_worker_rss_bytes{{worker="{worker}"}}' in text
    assert "msgvoice_worker_rss_bytes" in text and "msgvoice_queue_depth 0.0" in text
    assert "msgvoice_synthesis_seconds_count 1.0" in text


def test_json_logs_parse_and_never_carry_the_users_text(clean_env: Path) -> None:
    """With --log-format json every log line is a JSON object, and a user's message appears
    only as its length and a short hash."""
    import json  # noqa: PLC0415

    from tests.daemon_util import free_port  # noqa: PLC0415

    secret = "我的银行密码是一二三四"
    done = run_msgvoice(
        "run",
        "--console",
        "--log-format",
        "json",
        env={"MSGVOICE_HTTP_PORT": str(free_port())},
        input=f"/tts {secret}\n",
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert any("sha=" in line["msg"] for line in lines)
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])
    assert secret not in done.stderr


async def test_chat_speaker_picks_the_voice_of_its_replies(clean_env: Path) -> None:
    """`/mode speaker en` makes the chat's voice notes use that voice (`EN-us` is `en-US`);
    `off` restores the
    configured one; /mode shows it; a name the engine lacks is answered with the list and
    changes nothing, so later voice notes still speak."""
    async with running(clean_env) as (daemon, client):

        async def spoken() -> str | None:
            reply = await client.post("/v1/messages", json={"chat_id": "v", "text": "/tts hello"})
            job = daemon.journal.job(reply.json()["jobs"][0])
            await wait_job(client, reply.json()["jobs"][0])
            return job.speaker if job else None

        await client.post("/v1/messages", json={"chat_id": "v", "text": "/mode speaker en"})
        assert await spoken() == "en"
        shown = await client.post("/v1/messages", json={"chat_id": "v", "text": "/mode"})
        assert shown.json()["replies"][0].endswith("音色：en")
        await client.post("/v1/messages", json={"chat_id": "v", "text": "/mode speaker EN-us"})
        assert await spoken() == "en-US"  # any case; kept as the engine spells it
        await client.post("/v1/messages", json={"chat_id": "v", "text": "/mode speaker off"})
        assert await spoken() is None
        unknown = await client.post(
            "/v1/messages", json={"chat_id": "v", "text": "/mode speaker nobody"}
        )
        (answer,) = unknown.json()["replies"]
        assert answer.startswith("没有这个音色：nobody。可用的音色：") and "cmn" in answer
        after = await client.post("/v1/messages", json={"chat_id": "v", "text": "/tts hi"})
        job = await wait_job(client, after.json()["jobs"][0])
        assert job["state"] == "done" and daemon.journal.chat("v").speaker is None
