"""The soak: disk and memory over thousands of jobs under a small retention; messages lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import (
    dir_mb,
    start_daemon,
    until_final,
)


async def soak_figures(url: str, state: Path, pid: int, jobs: int) -> dict[str, Any]:
    """Post `jobs` /tts over 20 chats, 16 at a time; sample disk and RSS as they finish."""
    samples: list[tuple[int, float, float]] = []
    done: list[str] = []
    states: dict[str, str] = {}
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(i: int) -> None:
            async with gate:
                chat = f"s{i % 20}"
                answer = await client.post(
                    "/v1/messages", json={"chat_id": chat, "text": f"/tts 第{i}条。"}
                )
                (job_id,) = answer.json()["jobs"]
                await until_final(client, [job_id])
                states[job_id] = (await client.get(f"/v1/jobs/{job_id}")).json()["state"]
                done.append(job_id)
                if len(done) % max(1, jobs // 10) == 0:
                    rss = psutil.Process(pid).memory_info().rss / 2**20
                    samples.append((len(done), dir_mb(state), rss))

        await asyncio.gather(*(one(i) for i in range(jobs)))
    lost = sum(1 for s in states.values() if s != "done") + (jobs - len(states))
    return {"samples": samples, "lost": lost, "jobs": jobs}


def bench_soak(tmp: Path, jobs: int) -> dict[str, Any]:
    state = tmp / "soak"
    env = {
        "MSGVOICE_RETENTION_AUDIO_MAX_MB": "2",
        "MSGVOICE_RETENTION_GRACE_S": "0",
        "MSGVOICE_RETENTION_EVERY_S": "2",
    }
    proc, url = start_daemon(state, **env)
    try:
        figures = asyncio.run(soak_figures(url, state / "daemon", proc.pid, jobs))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"\n== soak: {jobs} /tts over 20 chats, retention 2 MB of voice notes ==")
    print(f"{'jobs done':>9} {'state dir MB':>12} {'daemon RSS MB':>13}")
    for count, disk, rss in figures["samples"]:
        print(f"{count:9d} {disk:12.1f} {rss:13.0f}")
    print(f"lost: {figures['lost']} of {jobs}")
    return figures
