"""The soak: disk and memory over thousands of jobs under a small retention; messages lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import (
    REPO,
    TEXTS,
    PeakRss,
    dir_mb,
    start_daemon,
    stream,
    until_final,
)


async def soak_figures(url: str, state: Path, pid: int, jobs: int) -> dict[str, Any]:
    """Post `jobs` mixed requests, 16 at a time: short /tts over 20 chats, one in ten a
    300-character /tts, one in ten a 300-character speech API request (mp3, streamed);
    sample disk and RSS as they finish."""
    samples: list[tuple[int, float, float]] = []
    done: list[str] = []
    states: dict[str, str] = {}
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(i: int) -> None:
            async with gate:
                chat = f"s{i % 20}"
                if i % 10 == 5:
                    await stream(client, TEXTS["300ch"], "mp3")
                    states[f"api-{i}"] = "done"
                    done.append(f"api-{i}")
                    return
                text = TEXTS["300ch"] if i % 10 == 0 else f"第{i}条。"
                answer = await client.post(
                    "/v1/messages", json={"chat_id": chat, "text": f"/tts {text}"}
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


SETTLE_S = 3.0
"""After the last job: the daemon hands its burst's heap back once the lane is idle."""


def _one_soak(tmp: Path, jobs: int, repo: Path, workers: str) -> dict[str, Any]:
    state = tmp / f"soak-{repo.name}-{workers}"
    env = {
        "MSGVOICE_RETENTION_AUDIO_MAX_MB": "2",
        "MSGVOICE_RETENTION_GRACE_S": "0",
        "MSGVOICE_RETENTION_EVERY_S": "2",
        "MSGVOICE_WORKER_COUNT": workers,
    }
    proc, url = start_daemon(state, repo, **env)
    try:
        with PeakRss(proc.pid) as peak:
            figures = asyncio.run(soak_figures(url, state / "daemon", proc.pid, jobs))
        time.sleep(SETTLE_S)
        figures["peak_mb"] = peak.main_mb
        figures["settled_mb"] = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return figures


def bench_soak(tmp: Path, jobs: int, compare: Path | None = None) -> dict[str, Any]:
    """The soak for 1 and 2 workers (and another checkout's daemon with 1): disk and RSS as
    jobs finish, the daemon's peak RSS (sampled every 10 ms) beside its settled RSS, lost."""
    setups = {"count 1": (REPO, "1"), "count 2": (REPO, "2")}
    if compare is not None:
        setups[f"{compare.name} count 1"] = (compare, "1")
        setups[f"{compare.name} count 2"] = (compare, "2")
    runs = {label: _one_soak(tmp, jobs, repo, n) for label, (repo, n) in setups.items()}
    print(f"\n== soak: {jobs} mixed requests, 16 at a time, retention 2 MB of voice notes ==")
    for label, figures in runs.items():
        print(f"-- {label} --")
        print(f"{'jobs done':>9} {'state dir MB':>12} {'daemon RSS MB':>13}")
        for count, disk, rss in figures["samples"]:
            print(f"{count:9d} {disk:12.1f} {rss:13.0f}")
    print(f"{'daemon':<22} {'peak RSS MB':>11} {'settled MB':>10} {'lost':>5}")
    for label, figures in runs.items():
        print(
            f"{label:<22} {figures['peak_mb']:11.0f} {figures['settled_mb']:10.0f} "
            f"{figures['lost']:5d}"
        )
    lost = sum(f["lost"] for f in runs.values())
    return {"runs": runs, "lost": lost}
