"""The emotion analyser's cost per reply against a warm, a cold, a hung and a refusing server.

Each server is one of tests/fake_llm.py's (which follow the real servers): warm (LM Studio,
answering in 50 ms), cold (LM Studio with JIT loading that takes 3 s), hung (accepts
connections, never answers) and refusing (llama-cpp-python, whose 500 refuses `json_schema`).
The analyser starts as the daemon starts it (a warm-up in the background), then REPLIES
replies come GAP_S apart, each with new text. Printed per server: each reply's wait
(median and worst), the total over all replies, how many got the LLM's vectors and how many
requests the server saw. With --compare-with, another checkout's analyser meets the same
servers in the same run, side by side.

Run as a script (`python bench/llm.py CHECKOUT`) it measures CHECKOUT's analyser and prints
JSON: the analyser comes from CHECKOUT (first on PYTHONPATH), the fakes from this repo.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REPLIES = 8
GAP_S = 0.5
BOUNDS = {"MSGVOICE_EMOTION_LLM_TIMEOUT_S": "1", "MSGVOICE_EMOTION_LLM_FIRST_CALL_TIMEOUT_S": "4"}
SERVERS: dict[str, dict[str, Any]] = {
    "warm": {"delay_s": 0.05},
    "cold": {"loaded": False, "load_s": 3.0},
    "hung": {"frozen": True},
    "refusing": {"kind": "llama-cpp-python", "delay_s": 0.05},
}


def _fakes() -> Any:
    spec = importlib.util.spec_from_file_location("fake_llm", REPO / "tests" / "fake_llm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_llm"] = module
    spec.loader.exec_module(module)
    return module


async def _one_server(name: str) -> dict[str, Any]:
    import httpx  # noqa: PLC0415  # from the checkout's interpreter, like the analyser

    from msgvoice.config import load  # noqa: PLC0415
    from msgvoice.speech.emotion_llm import Analyser  # noqa: PLC0415

    fakes = _fakes()
    knobs = dict(SERVERS[name])
    frozen, delay = knobs.pop("frozen", False), knobs.pop("delay_s", 0.0)
    script = [fakes.Reply(fakes.vectors_json([0, 0.6, 0, 0, 0, 0, 0, 0]), delay_s=delay)] * 99
    llm = fakes.FakeLLM(script, **knobs)
    llm.frozen = frozen
    waits, answered = [], 0
    async with llm, httpx.AsyncClient() as client:
        env = {"LMSTUDIO_BASE_URL": llm.url, "LMSTUDIO_EMO_MODEL": "emo-model", **BOUNDS}
        analyser = Analyser(load(None, env).emotion, client)
        analyser.start_warming()
        for n in range(REPLIES):
            await asyncio.sleep(GAP_S)
            started = time.perf_counter()
            found = await analyser.analyse("生气", [f"第{n}条消息。"])
            waits.append((time.perf_counter() - started) * 1000)
            answered += found is not None
        await analyser.close()
        llm.frozen = False
    return {
        "median_ms": statistics.median(waits),
        "worst_ms": max(waits),
        "total_s": sum(waits) / 1000,
        "llm_answers": answered,
        "requests": len(llm.requests),
    }


def measure(checkout: Path | None = None) -> dict[str, dict[str, Any]]:
    """Each server's figures for `checkout`'s analyser (this one's by default)."""
    env = dict(os.environ, PYTHONPATH=str(checkout or REPO))
    script = [sys.executable, str(Path(__file__).resolve()), str(checkout or REPO)]
    out = subprocess.run(script, env=env, capture_output=True, text=True, check=True, timeout=600)
    figures: dict[str, dict[str, Any]] = json.loads(out.stdout)
    return figures


def bench_llm(compare_with: Path | None) -> dict[str, Any]:
    """Print and return the analyser's cost per reply for each server (and the other's)."""
    print(
        f"\n== emotion LLM: {REPLIES} replies {GAP_S:g} s apart from start, per server "
        "(bounds 1 s warm, 4 s cold) =="
    )
    runs = {"now": measure()}
    if compare_with is not None:
        runs[compare_with.name] = measure(compare_with)
    print(f"{'server':<10} {'checkout':<12} {'median':>8} {'worst':>8} {'total':>8} llm  requests")
    for server in SERVERS:
        for label, figures in runs.items():
            f = figures[server]
            print(
                f"{server:<10} {label:<12} {f['median_ms']:>6.0f}ms {f['worst_ms']:>6.0f}ms "
                f"{f['total_s']:>7.2f}s {f['llm_answers']:>3}/{REPLIES} {f['requests']:>5}"
            )
    return runs


if __name__ == "__main__":
    import logging

    logging.disable(logging.CRITICAL)
    results = {name: asyncio.run(_one_server(name)) for name in SERVERS}
    print(json.dumps(results))
