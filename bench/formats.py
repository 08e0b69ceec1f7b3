"""Every speech API format for a long text: first byte and total, and each total against
opus's, in one run (and another checkout's daemon side by side with --compare-with)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from bench.common import TEXTS, median, start_daemon, stream

FORMATS = ("pcm", "wav", "opus", "flac", "mp3", "aac")
ENGLISH = (
    "The morning light falls on the windowsill and the city slowly wakes up. "
    "Buses pass one after another, and people check their phones on the way to work. "
)


def long_text(chars: int = 3000) -> str:
    """About `chars` characters of mixed Chinese and English, in sentences."""
    text = ""
    while len(text) < chars:
        text += TEXTS["300ch"] + ENGLISH
    return text[:chars].rsplit("。", 1)[0] + "。"


async def _figures(url: str, text: str, runs: int) -> dict[str, dict[str, float]]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await stream(client, "你好。", "opus")  # the worker warm
        rows = {}
        for fmt in FORMATS:
            firsts, totals = [], []
            for _ in range(runs):
                first, total, _body = await stream(client, text, fmt)
                firsts.append(first)
                totals.append(total)
            rows[fmt] = {"first_byte_s": median(firsts), "total_s": median(totals)}
    return rows


def bench_formats(runs: int, tmp: Path, compare: Path | None) -> dict[str, Any]:
    """Print and return first byte and total per format for a 3,000-character text."""
    text = long_text()
    checkouts = {"now": Path(__file__).resolve().parent.parent}
    if compare is not None:
        checkouts[compare.name] = compare
    results: dict[str, Any] = {}
    for label, repo in checkouts.items():
        proc, url = start_daemon(tmp / f"formats-{label}", repo)
        try:
            results[label] = asyncio.run(_figures(url, text, max(1, min(runs, 2))))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"\n== speech API formats, {len(text)} characters of Chinese and English, streamed ==")
    print(
        f"{'format':<7}"
        + "".join(f"{label + ' first':>14}{'total':>9}{'× opus':>8}" for label in results)
    )
    for fmt in FORMATS:
        line = f"{fmt:<7}"
        for rows in results.values():
            row, opus = rows[fmt], rows["opus"]["total_s"]
            line += (
                f"{row['first_byte_s']:>13.3f}s{row['total_s']:>8.2f}s{row['total_s'] / opus:>8.2f}"
            )
        print(line)
    return results
