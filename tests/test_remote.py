"""The remote engine: speech from another server that speaks OpenAI's /v1/audio/speech.

Against a second real `msgvoice run` on loopback (its own worker, its own eSpeak), and against
a server that is slow, fails with 5xx, or drops the stream mid-way, as such servers do (an
aiohttp app answering chunked pcm the way msgvoice's speech API and Kokoro-FastAPI do).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from aiohttp import web

from tests.daemon_util import DaemonProcess, free_port, outbox, running, wait_job


@asynccontextmanager
async def flaky(mode: str) -> AsyncIterator[str]:
    """A speech server that is `slow` (never in time), fails (`500`) or `drops` the stream."""

    async def speech(request: web.Request) -> web.StreamResponse:
        await request.json()
        if mode == "500":
            return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)
        if mode == "slow":
            await asyncio.sleep(30)
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(np.zeros(2400, "<i2").tobytes())
        assert request.transport is not None
        request.transport.close()  # the server dies mid-stream
        return response

    app = web.Application()
    app.router.add_post("/v1/audio/speech", speech)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def remote_env(*urls: str, **extra: str) -> dict[str, str]:
    return {
        "MSGVOICE_TTS_ENGINE": "remote",
        "MSGVOICE_REMOTE_BASE_URL": ",".join(urls),
        "MSGVOICE_REMOTE_TIMEOUT_S": "3",
        "MSGVOICE_TTS_FALLBACK": "espeak",
        **extra,
    }


async def test_a_daemon_speaks_through_a_second_msgvoice(clean_env: Path, tmp_path: Path) -> None:
    """/tts and a bot's reply are voiced by the remote msgvoice (its eSpeak, our emotion)."""
    box = DaemonProcess(tmp_path / "box").start()
    try:
        async with running(clean_env, **remote_env(box.url)) as (_, client):
            tts = await client.post(
                "/v1/messages", json={"chat_id": "r", "text": "/tts 开心：你好"}
            )
            job = await wait_job(client, tts.json()["jobs"][0])
            await client.post("/v1/messages", json={"chat_id": "r", "text": "/mode voice audio"})
            reply = await client.post("/v1/chats/r/replies", json={"text": "好的，马上就来。"})
            auto = await wait_job(client, reply.json()["jobs"][0])
    finally:
        box.signal(signal.SIGTERM)
    assert job["state"] == "done" and job["engine"] == "remote" and not job["fallback_from"]
    assert job["audio"]["duration_s"] > 0.3 and job["emotion"]["source"] == "lexicon"
    assert auto["state"] == "done" and auto["engine"] == "remote"


async def test_a_remote_restart_mid_burst_loses_nothing(clean_env: Path, tmp_path: Path) -> None:
    """The remote msgvoice restarts during a burst of ten /tts: every job ends done (by the
    remote, or by eSpeak while it was down), in order, none lost."""
    box = DaemonProcess(tmp_path / "box").start()
    try:
        async with running(clean_env, **remote_env(box.url)) as (_, client):
            jobs = []
            for i in range(10):
                posted = await client.post(
                    "/v1/messages", json={"chat_id": "b", "text": f"/tts 第{i}条。"}
                )
                jobs.append(posted.json()["jobs"][0])
                if i == 3:
                    box.signal(signal.SIGTERM)
                    box.start()
            finished = [await wait_job(client, j) for j in jobs]
            delivered = [i["job_id"] for i in await outbox(client, "b") if i["kind"] == "audio"]
    finally:
        box.signal(signal.SIGTERM)
    assert [j["state"] for j in finished] == ["done"] * 10 and delivered == jobs


async def test_all_remotes_down_falls_back_to_espeak(clean_env: Path) -> None:
    """Slow, failing and dropping servers are each skipped; with none left, eSpeak speaks and
    the job says it fell back from the remote engine."""
    async with flaky("slow") as slow, flaky("500") as failing, flaky("drops") as dropping:
        env = remote_env(slow, failing, dropping)
        async with running(clean_env, **env) as (_, client):
            posted = await client.post("/v1/messages", json={"chat_id": "f", "text": "/tts 你好"})
            job = await wait_job(client, posted.json()["jobs"][0], within=60)
    assert job["state"] == "done" and job["engine"] == "espeak"
    assert job["fallback_from"] == "remote"


async def test_a_failing_server_is_skipped_for_a_healthy_one(
    clean_env: Path, tmp_path: Path
) -> None:
    """With a failing server first in the list, the healthy msgvoice answers."""
    box = DaemonProcess(tmp_path / "box").start()
    try:
        async with (
            flaky("500") as failing,
            running(clean_env, **remote_env(failing, box.url)) as (
                _,
                client,
            ),
        ):
            posted = await client.post("/v1/messages", json={"chat_id": "h", "text": "/tts 你好"})
            job = await wait_job(client, posted.json()["jobs"][0])
    finally:
        box.signal(signal.SIGTERM)
    assert job["state"] == "done" and job["engine"] == "remote"
