"""Kokoro's paths side by side, on the generated checkpoint of the real architecture: fp32
(`kokoro.precision = "fp32"`: kokoro's own arithmetic; the in-place snakes give its samples
exactly) and the default (auto: the bf16 vocoder where the CPU has it), each in a worker:
warm RTF for the 300-character Mandarin text, the time to the first audio bytes of a streamed
request through a daemon, and how far the default's sound is from fp32's at the same seed
(log-spectral distance, beside the distance between two fp32 runs at different seeds: the
model's own noise source, for scale). With --compare-with, the default path's first audio
through the other checkout's daemon too."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from bench.common import REPO, TEXTS, median, start_daemon, stream

PATHS = {"fp32": "fp32", "default (auto)": "auto"}


def log_spectrum(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    frames = np.lib.stride_tricks.sliding_window_view(samples, 1024)[::256]
    return np.log(np.abs(np.fft.rfft(frames * np.hanning(1024), axis=1)) + 1e-5)


def distance(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Mean absolute log-magnitude difference (nepers) over the shorter length."""
    n = min(a.size, b.size)
    return float(np.mean(np.abs(log_spectrum(a[:n]) - log_spectrum(b[:n]))))


async def path_figures(python: str, weights: str, precision: str) -> dict[str, Any]:
    from msgvoice.config import WorkerConfig  # noqa: PLC0415
    from msgvoice.speech.supervisor import Supervisor, SynthRequest  # noqa: PLC0415

    options = {"model_dir": weights, "precision": precision}
    async with Supervisor(WorkerConfig(python=python), "kokoro", options) as sup:
        await sup.synthesize(SynthRequest("warm", "你好"))
        rtfs, samples = [], {}
        for seed in (1, 1, 2):
            result = await sup.synthesize(SynthRequest(f"s{seed}", TEXTS["300ch"], seed=seed))
            rtfs.append(result.synth_s / (result.samples.size / result.sample_rate))
            samples[seed] = result.samples
        facts = dict(sup.engine_facts)
    return {"rtf": median(rtfs), "samples": samples, "precision": facts.get("precision")}


async def first_audio_s(
    tmp: Path, python: str, weights: str, precision: str, repo: Path = REPO
) -> float:
    proc, url = start_daemon(
        tmp / f"kokoro-{precision}-{repo.name}",
        repo,
        MSGVOICE_TTS_ENGINE="kokoro",
        MSGVOICE_WORKER_PYTHON=python,
        MSGVOICE_KOKORO_MODEL_DIR=weights,
        MSGVOICE_KOKORO_PRECISION=precision,
        HF_HUB_OFFLINE="1",
    )
    try:
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            await stream(http, "你好")  # the worker loaded and warm
            firsts = [(await stream(http, TEXTS["300ch"]))[0] for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(30)
    return median(firsts)


def bench_kokoro(tmp: Path, python: str, weights: str, compare: Path | None = None) -> None:
    print("\n== Kokoro paths (generated checkpoint of the real architecture, 300 chars) ==")
    print(f"{'path':16} {'vocoder':>12} {'RTF':>6} {'first audio s':>14} {'vs fp32':>8}")
    rows = {}
    for label, precision in PATHS.items():
        rows[label] = asyncio.run(path_figures(python, weights, precision))
        rows[label]["first_s"] = asyncio.run(first_audio_s(tmp, python, weights, precision))
    fp32 = rows["fp32"]["samples"][1]
    for label, row in rows.items():
        print(
            f"{label:16} {row['precision']:>12} {row['rtf']:6.3f} {row['first_s']:14.2f} "
            f"{distance(fp32, row['samples'][1]):8.3f}"
        )
    before, after = rows["fp32"], rows["default (auto)"]
    same_seed = distance(fp32, after["samples"][1])
    other_seed = distance(fp32, before["samples"][2])
    if compare is not None:  # the same default path through the other checkout's daemon
        then = asyncio.run(first_audio_s(tmp, python, weights, "auto", compare))
        print(
            f"first audio, default path: {after['first_s']:.2f} s here, {then:.2f} s at {compare}"
        )
    print(
        f"speed-up {before['rtf'] / after['rtf']:.2f}x; log-spectral distance to fp32 at the same "
        f"seed {same_seed:.3f}, against {other_seed:.3f} between two fp32 runs at different "
        f"seeds (cores: {os.cpu_count()})"
    )
