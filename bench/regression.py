"""The regression set (time to first audio, RTF, MAE, clicks, hashes, RSS) against
bench/baseline.json."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    REPO,
    TEXTS,
    median,
    start_daemon,
    stream,
    tree_mb,
)

REGRESSION_TEXTS = {
    "zh-short": "你好，很高兴见到你。",
    "zh-medium": TEXTS["medium"],
    "zh-long": TEXTS["300ch"],
    "en-short": "Hello, nice to meet you.",
    "en-medium": "The weather is lovely today. Shall we take a walk in the park this afternoon?",
    "en-long": (
        "The city wakes up slowly in the morning light. Buses pass one after another, "
        "and people read their phones or close their eyes. Children wave goodbye at "
        "the school gate. In the park, old men practise tai chi while young people run "
        "with their headphones on. At noon the office workers pour into small "
        "restaurants, talking about work and life. "
    )
    * 2,
    "mix-short": "我今天用 Python 写代码。",
    "mix-medium": "明天的 meeting 改到下午三点，请大家带上 laptop。Thanks a lot!",
    "mix-long": (
        "我们的 project 进展顺利，下周一要给 client 做 demo。请大家把 slides 准备好，"
        "周五之前发到 group 里。If you have any questions, just let me know. "
    )
    * 3,
}


THRESHOLDS = {
    "ttfa_p50_ms": 1.5,
    "ttfa_p95_ms": 1.5,
    "rtf_p50": 1.5,
    "peak_rss_mb": 1.3,
    "opus_over_pcm": 1.5,
}
"""How much worse than the baseline a figure may get before it counts as a regression."""


BASELINE = REPO / "bench" / "baseline.json"


def _pcm(data: bytes) -> Any:
    import numpy as np  # noqa: PLC0415

    return np.frombuffer(data, "<i2").astype(np.float32) / 32767.0


async def regression_figures(url: str, daemon_pid: int, runs: int) -> dict[str, Any]:
    """TTFA, RTF, stream-vs-offline MAE, join clicks and hash stability over the text set."""
    import hashlib  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from msgvoice.sound.audio import click_ratio  # noqa: PLC0415

    rows: dict[str, dict[str, float]] = {}
    peak = 0.0
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for name, text in REGRESSION_TEXTS.items():
            ttfas, rtfs, hashes = [], [], set()
            streamed = b""
            for _ in range(runs):
                first, total, streamed = await stream(http, text)
                ttfas.append(first * 1000)
                rtfs.append(total / (len(streamed) / 2 / 24_000))
                peak = max(peak, tree_mb(daemon_pid))
            for _ in range(runs):
                _, _, offline = await stream(http, text, stream=False)
                hashes.add(hashlib.sha256(offline).hexdigest())
            a, b = _pcm(offline), _pcm(streamed)
            n = min(len(a), len(b))
            rows[name] = {
                "ttfa_ms": median(ttfas),
                "rtf": median(rtfs),
                "mae": float(np.mean(np.abs(a[:n] - b[:n]))) + abs(len(a) - len(b)),
                "click_ratio": click_ratio(a, 24_000),
                "hash_stable": float(len(hashes) == 1),
                "audio_s": len(a) / 24_000,
            }
        long_text = (REGRESSION_TEXTS["zh-long"] * 4)[:1000]
        sentence = "清晨的阳光洒在窗台上，城市慢慢醒来。"
        long_first = median([(await stream(http, long_text))[0] for _ in range(runs)]) * 1000
        one = median([(await stream(http, sentence, stream=False))[1] for _ in range(runs)])
        opus = [(await stream(http, TEXTS["300ch"], "opus", False))[1] for _ in range(runs)]
        pcm = [(await stream(http, TEXTS["300ch"], "pcm", False))[1] for _ in range(runs)]
    ttfa = sorted(r["ttfa_ms"] for r in rows.values())
    return {
        "texts": rows,
        "ttfa_p50_ms": median(ttfa),
        "ttfa_p95_ms": ttfa[max(0, int(len(ttfa) * 0.95) - 1)],
        "rtf_p50": median([r["rtf"] for r in rows.values()]),
        "mae_max": max(r["mae"] for r in rows.values()),
        "click_ratio_max": max(r["click_ratio"] for r in rows.values()),
        "hash_stable": all(r["hash_stable"] for r in rows.values()),
        "peak_rss_mb": peak,
        "ttfa_1000ch_ms": long_first,
        "one_sentence_ms": one * 1000,
        "opus_300ch_ms": median(opus) * 1000,
        "opus_over_pcm": median(opus) / median(pcm),
    }


def _regressions(now: dict[str, Any], base: dict[str, Any]) -> list[str]:
    found = [
        f"{key}: {now[key]:.3g} vs baseline {base[key]:.3g} (over x{limit})"
        for key, limit in THRESHOLDS.items()
        if key in base and now[key] > base[key] * limit
    ]
    if now["mae_max"] > 1e-3:
        found.append(f"stream vs offline MAE {now['mae_max']:.2g} > 1e-3")
    if now["click_ratio_max"] > 1.0:
        found.append(f"joins click: ratio {now['click_ratio_max']:.2f} > 1")
    if not now["hash_stable"]:
        found.append("the same seeded request gave different bytes")
    return found


def _chart(figures: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(figures["texts"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.bar(names, [figures["texts"][n]["ttfa_ms"] for n in names])
    left.set_ylabel("time to first audio, ms (P50)")
    right.bar(names, [figures["texts"][n]["rtf"] for n in names], color="tab:orange")
    right.set_ylabel("RTF (P50)")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=45)
    fig.suptitle("msgvoice regression: eSpeak, streamed pcm over HTTP")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bench_regression(tmp: Path, runs: int, out: Path, save_baseline: bool) -> int:
    proc, url = start_daemon(tmp)
    try:
        figures = asyncio.run(regression_figures(url, proc.pid, runs))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    _chart(figures, out.with_suffix(".png"))
    print("\n== regression (eSpeak, pcm over HTTP, seed 1) ==")
    print(f"{'text':11} {'TTFA ms':>8} {'RTF':>7} {'MAE':>8} {'click':>6} {'stable':>6}")
    for name, row in figures["texts"].items():
        print(
            f"{name:11} {row['ttfa_ms']:8.1f} {row['rtf']:7.3f} {row['mae']:8.1e} "
            f"{row['click_ratio']:6.2f} {'yes' if row['hash_stable'] else 'NO':>6}"
        )
    print(
        f"TTFA P50/P95 {figures['ttfa_p50_ms']:.1f}/{figures['ttfa_p95_ms']:.1f} ms, RTF P50 "
        f"{figures['rtf_p50']:.3f}, worker peak {figures['peak_rss_mb']:.0f} MB; 1,000 chars: "
        f"first audio {figures['ttfa_1000ch_ms']:.0f} ms vs one sentence in "
        f"{figures['one_sentence_ms']:.0f} ms "
        f"(x{figures['ttfa_1000ch_ms'] / figures['one_sentence_ms']:.1f})"
    )
    print(
        f"opus (whole file, 260 chars): {figures['opus_300ch_ms']:.0f} ms, "
        f"x{figures['opus_over_pcm']:.2f} the same request as pcm (the encoder's share)"
    )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    if save_baseline:
        BASELINE.write_text(json.dumps(figures, indent=2))
        print(f"saved as the baseline: {BASELINE}")
        return 0
    if not BASELINE.exists():
        print("no baseline yet (scripts/bench --regression --save-baseline)")
        return 0
    found = _regressions(figures, json.loads(BASELINE.read_text()))
    print("regressed: " + "; ".join(found) if found else "no regression against the baseline")
    return 1 if found else 0


# -- encoders, the floor, parallel chats (issue: voice notes at the encoder's limit) ------------
