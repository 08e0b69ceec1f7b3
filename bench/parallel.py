"""/tts against the floor (the engine alone) with one and two workers, side by side."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import httpx
import psutil

from bench.common import (
    REPO,
    TEXTS,
    daemon_memory,
    median,
    start_daemon,
    stream,
    until_final,
)
from msgvoice.sound.audio import resample
from msgvoice.sound.encoder import Encoder, EncodeSettings
from msgvoice.speech.formats import FILE_FORMATS
from msgvoice.worker.engines.espeak import EspeakEngine
from msgvoice.worker.protocol import Prosody, to_float32


def floor_ms(engine: EspeakEngine, text: str, runs: int, fork: bool = False) -> float:
    """The physical floor: raw libespeak-ng synthesis in this process + soxr to 48 kHz +
    libopus at complexity 0. With `fork`, eSpeak speaks in the child the worker forks ahead
    for reproducibility (`synthesize`), once that child waits for its request as it does
    between two requests, so the difference is that fork's cost."""
    times = []
    for _ in range(runs):
        engine.prepare()
        if fork and engine._ready is not None:
            until_waiting(engine._ready.pid)
        started = time.perf_counter()
        if fork:
            samples, rate = engine.synthesize(text, None, Prosody(), None)
        else:  # the utterance itself, without the pristine child
            samples, rate = engine._speak(text, None, Prosody(), None), engine.sample_rate
        encoder = Encoder(FILE_FORMATS["ogg"], 48_000, False, EncodeSettings())
        encoder.feed(resample(to_float32(samples), rate, 48_000))
        encoder.finish()
        times.append(time.perf_counter() - started)
    return median(times) * 1000


def until_waiting(pid: int, within_s: float = 1.0) -> None:
    """Until process `pid` sleeps (a forked eSpeak child blocks on its request once it has
    made its pages its own); Linux's /proc, elsewhere at once."""
    deadline = time.monotonic() + within_s
    stat = Path(f"/proc/{pid}/stat")
    while stat.exists() and time.monotonic() < deadline:
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "S":
            return
        time.sleep(0.0002)


async def _tts_round(client: httpx.AsyncClient, posts: list[tuple[str, str]]) -> list[float]:
    """Post every (chat, text) at once; each one's post → done seconds."""

    async def one(chat: str, text: str) -> float:
        started = time.perf_counter()
        answer = await client.post("/v1/messages", json={"chat_id": chat, "text": f"/tts {text}"})
        await until_final(client, answer.json()["jobs"])
        return time.perf_counter() - started

    return list(await asyncio.gather(*(one(chat, text) for chat, text in posts)))


def cpu_s(proc: psutil.Process) -> tuple[float, float]:
    """(the daemon's own CPU seconds, its workers' with the children they reaped)."""
    own = proc.cpu_times()
    workers = 0.0
    for child in proc.children():
        with contextlib.suppress(psutil.Error):
            t = child.cpu_times()
            workers += t.user + t.system + t.children_user + t.children_system
    return own.user + own.system, workers


async def parallel_figures(url: str, runs: int, pid: int) -> dict[str, float]:
    """Latency by text length (one at a time), throughput for 1, 4 and 16 chats at once, and
    the CPU a job of the 16-chat round took in the daemon and in its workers."""
    figures: dict[str, float] = {}
    daemon = psutil.Process(pid)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await _tts_round(client, [("warm", "你好")])
        for name in ("short", "medium", "300ch"):
            lat = [(await _tts_round(client, [("lat", TEXTS[name])]))[0] for _ in range(runs * 3)]
            figures[f"p50_{name}_ms"] = median(lat) * 1000
        for chats in (1, 4, 16):
            posts = [(f"c{chats}-{i % chats}", TEXTS["medium"]) for i in range(48)]
            started, before = time.perf_counter(), cpu_s(daemon)
            lat = sorted(await _tts_round(client, posts))
            spent = [
                (b - a) / len(posts) * 1000 for a, b in zip(before, cpu_s(daemon), strict=True)
            ]
            figures["daemon_cpu_ms"], figures["workers_cpu_ms"] = spent
            figures[f"jobs_per_s_{chats}"] = len(posts) / (time.perf_counter() - started)
            figures["cores_busy"] = figures[f"jobs_per_s_{chats}"] * sum(spent) / 1000
            figures[f"p95_{chats}_ms"] = lat[int(len(lat) * 0.95) - 1] * 1000
        long_text = (TEXTS["300ch"] * 12)[:3000]
        sentence = "清晨的阳光洒在窗台上，城市慢慢醒来。"
        http = httpx.AsyncClient(base_url=url, timeout=300)
        async with http:
            figures["first_audio_3000ch_ms"] = median(
                [(await stream(http, long_text))[0] * 1000 for _ in range(runs)]
            )
            figures["first_audio_sentence_ms"] = median(
                [(await stream(http, sentence))[0] * 1000 for _ in range(runs)]
            )
    return figures


def bench_parallel(runs: int, tmp: Path, compare: Path | None) -> dict[str, dict[str, float]]:
    """Daemon figures for worker.count 1 and 2 (and another checkout's daemon), side by side:
    all of them running, asked in turn for `runs` rounds (at least 3), medians printed."""
    engine = EspeakEngine("cmn")
    names = ("short", "medium", "300ch")
    floors = {name: floor_ms(engine, TEXTS[name], max(runs, 5)) for name in names}
    forked = {name: floor_ms(engine, TEXTS[name], max(runs, 5), fork=True) for name in names}
    setups = {"count 1": (REPO, "1"), "count 2": (REPO, "2")}
    if compare is not None:
        setups[f"{compare.name}"] = (compare, "1")
    daemons = {
        label: start_daemon(tmp / label.replace(" ", "-"), repo, MSGVOICE_WORKER_COUNT=count)
        for label, (repo, count) in setups.items()
    }
    # Every daemon runs; each round asks them in turn, starting one further along, so a box
    # that speeds up or slows down during the run favours none of them.
    rounds: dict[str, list[dict[str, float]]] = {label: [] for label in daemons}
    try:
        for n in range(max(runs, 3)):
            labels = list(daemons)
            for label in labels[n % len(labels) :] + labels[: n % len(labels)]:
                proc, url = daemons[label]
                rounds[label].append(asyncio.run(parallel_figures(url, 1, proc.pid)))
        rows = {
            label: {k: median([r[k] for r in found]) for k in found[0]}
            | daemon_memory(daemons[label][0].pid)
            for label, found in rounds.items()
        }
    finally:
        for proc, _url in daemons.values():
            proc.terminate()
            proc.wait(timeout=60)
    print("\n== /tts over HTTP against the floor (raw eSpeak + soxr + libopus in-process) ==")
    fork = ", ".join(f"{forked[n] - floors[n]:+.1f} ms for {len(TEXTS[n])} chars" for n in names)
    print(f"the worker's reproducibility fork (eSpeak in a pristine child) costs {fork}")
    head = "".join(f" {label:>16}" for label in rows)
    print(f"{'figure':28}{head}")
    for name in ("short", "medium", "300ch"):
        cells = "".join(
            f" {r[f'p50_{name}_ms']:7.0f} ({r[f'p50_{name}_ms'] / floors[name]:4.1f}x)"
            for r in rows.values()
        )
        print(f"{f'p50 {len(TEXTS[name])} chars (floor {floors[name]:.0f} ms)':28}{cells}")
    for chats in (1, 4, 16):
        print(
            f"{f'{chats} chats: jobs/s':28}"
            + "".join(f" {r[f'jobs_per_s_{chats}']:16.1f}" for r in rows.values())
        )
        print(
            f"{f'{chats} chats: p95 ms':28}"
            + "".join(f" {r[f'p95_{chats}_ms']:16.0f}" for r in rows.values())
        )
    for key, label in (
        ("first_audio_3000ch_ms", "first audio, 3000 chars ms"),
        ("first_audio_sentence_ms", "first audio, 1 sentence ms"),
        ("workers_cpu_ms", "16 chats: workers CPU ms/job"),
        ("daemon_cpu_ms", "16 chats: daemon CPU ms/job"),
        ("cores_busy", "16 chats: cores kept busy"),
        ("daemon_rss_mb", "daemon RSS MB"),
        ("worker_rss_max_mb", "largest worker RSS MB"),
    ):
        digits = 2 if key == "cores_busy" else 0
        print(f"{label:28}" + "".join(f" {r[key]:16.{digits}f}" for r in rows.values()))
    # A second worker can add only what one leaves idle: two keep at most every core busy
    # (less the bench's own client's share), one keeps `cores_busy`.
    cores, one = os.cpu_count() or 1, rows["count 1"]["cores_busy"]
    gained = rows["count 2"]["jobs_per_s_16"] / rows["count 1"]["jobs_per_s_16"]
    print(
        f"2 workers can give at most {cores}/{one:.2f} = {cores / one:.2f}x the jobs/s of 1 "
        f"here (16 chats: {gained:.2f}x)"
    )
    return {"floor_ms": floors, "forked_floor_ms": forked, **rows}  # type: ignore[dict-item]  # a report, not a schema


# -- soak: thousands of jobs under a small retention limit ---------------------------------------
