"""`msgvoice say` cold and warm, the engine alone, and the worker's start and recycle."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    TEXTS,
    PeakRss,
    median,
)
from msgvoice import compose
from msgvoice.config import load
from msgvoice.speech.speaker import SpeechJob
from msgvoice.worker.engines.espeak import EspeakEngine
from msgvoice.worker.protocol import Prosody


def cold_say(text: str, out: Path) -> tuple[float, dict[str, Any], PeakRss]:
    """`msgvoice say` as a user runs it: a fresh process, worker start-up included."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgvoice", "say", text, "-o", str(out), "--json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    with PeakRss(proc.pid) as peak:
        stdout, _ = proc.communicate(timeout=300)
    return time.perf_counter() - started, json.loads(stdout), peak


def engine_only(engine: EspeakEngine, text: str, runs: int) -> float:
    """The engine's own synthesis time for the text, in-process, no worker and no encoding."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.synthesize(text, None, Prosody(), None)
        times.append(time.perf_counter() - started)
    return median(times)


async def warm_pipeline(text: str, out: Path, runs: int) -> tuple[float, dict[str, float]]:
    """The same pipeline with a worker already running: real work without start-up."""
    config = load(None, os.environ)
    async with compose.speech_kit(config) as built:
        await built.speaker.speak(SpeechJob("warmup", "你好", out, "ogg"))
        walls, last = [], None
        for i in range(runs):
            started = time.perf_counter()
            last = await built.speaker.speak(SpeechJob(f"b{i}", text, out, "ogg"))
            walls.append(time.perf_counter() - started)
    assert last is not None
    return median(walls), last.timings


def bench_say(runs: int, tmp: Path) -> dict[str, Any]:
    engine = EspeakEngine("cmn")
    rows: dict[str, Any] = {}
    print("\n== say: end to end vs the engine alone (ogg/Opus, eSpeak) ==")
    print(
        f"{'text':8} {'chars':>5} {'audio s':>7} {'engine ms':>9} {'warm ms':>8} "
        f"{'cold ms':>8} {'warm/eng':>8} {'cold/eng':>8} {'encode ms':>9} "
        f"{'RTF warm':>8} {'peak MB':>14}"
    )
    for name, text in TEXTS.items():
        eng_s = engine_only(engine, text, runs)
        warm_s, timings = asyncio.run(warm_pipeline(text, tmp / f"warm-{name}.ogg", runs))
        colds = [cold_say(text, tmp / f"cold-{name}.ogg") for _ in range(runs)]
        cold_s = median([c[0] for c in colds])
        duration = colds[-1][1]["duration_s"]
        peak = colds[-1][2]
        rows[name] = {
            "chars": len(text),
            "audio_s": duration,
            "engine_ms": eng_s * 1000,
            "warm_ms": warm_s * 1000,
            "cold_ms": cold_s * 1000,
            "warm_over_engine": warm_s / eng_s,
            "cold_over_engine": cold_s / eng_s,
            "encode_ms": timings["encode_ms"],
            "rtf_warm": warm_s / duration,
            "peak_rss_say_mb": peak.main_mb,
            "peak_rss_tree_mb": peak.tree_mb,
        }
        r = rows[name]
        print(
            f"{name:8} {len(text):5d} {duration:7.2f} {r['engine_ms']:9.1f} "
            f"{r['warm_ms']:8.1f} {r['cold_ms']:8.0f} {r['warm_over_engine']:8.1f} "
            f"{r['cold_over_engine']:8.0f} {r['encode_ms']:9.1f} {r['rtf_warm']:8.4f} "
            f"{peak.main_mb:6.0f}+{peak.tree_mb - peak.main_mb:<4.0f}wk"
        )
    print("warm = pipeline with a running worker (segments, emotion, IPC, shaping, Opus);")
    print("cold = a fresh `msgvoice say` process (interpreter, imports, worker start-up).")
    return rows


async def worker_times(runs: int, tmp: Path) -> dict[str, float]:
    """Cold start (spawn → ready) and recycle (old worker stopped → new one ready)."""
    from msgvoice.config import WorkerConfig  # noqa: PLC0415
    from msgvoice.speech.supervisor import Supervisor, SynthRequest  # noqa: PLC0415

    colds, recycles = [], []
    for _ in range(runs):
        started = time.perf_counter()
        async with Supervisor(WorkerConfig(max_jobs=1), "espeak", {"voice": "cmn"}) as sup:
            colds.append(time.perf_counter() - started)
            first = sup.pid
            await sup.synthesize(SynthRequest("r", "你好"))
            recycle_started = time.perf_counter()
            while sup.pid in (None, first) or sup.state != "ready":  # noqa: ASYNC110 (polls facts)
                await asyncio.sleep(0.002)
            recycles.append(time.perf_counter() - recycle_started)
    return {"cold_start_ms": median(colds) * 1000, "recycle_ms": median(recycles) * 1000}
