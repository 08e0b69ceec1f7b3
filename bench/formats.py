"""Every speech API format for a 30-character and a 3,000-character text: first byte and
total, and each total against opus's, in one run (and another checkout's daemon side by side
with --compare-with)."""

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


async def _figures(url: str, texts: dict[str, str], runs: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await stream(client, "你好。", "opus")  # the worker warm
        rows: dict[str, Any] = {}
        for name, text in texts.items():
            for fmt in FORMATS:
                firsts, totals = [], []
                for _ in range(runs if name == "30ch" else max(1, min(runs, 2))):
                    first, total, _body = await stream(client, text, fmt)
                    firsts.append(first)
                    totals.append(total)
                rows[f"{name} {fmt}"] = {"first_byte_s": median(firsts), "total_s": median(totals)}
    return rows


def bench_formats(runs: int, tmp: Path, compare: Path | None) -> dict[str, Any]:
    """Print and return first byte and total per format for a short and a long text."""
    texts = {"30ch": TEXTS["medium"], "3000ch": long_text()}
    checkouts = {"now": Path(__file__).resolve().parent.parent}
    if compare is not None:
        checkouts[compare.name] = compare
    results: dict[str, Any] = {}
    for label, repo in checkouts.items():
        proc, url = start_daemon(tmp / f"formats-{label}", repo)
        try:
            results[label] = asyncio.run(_figures(url, texts, runs))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print("\n== speech API formats, streamed (30 and 3,000 characters of Chinese and English) ==")
    header = "".join(f"{label + ' first':>15}{'total':>9}{'x opus':>8}" for label in results)
    print(f"{'text format':<14}{header}")
    for name in texts:
        for fmt in FORMATS:
            line = f"{name + ' ' + fmt:<14}"
            for rows in results.values():
                row, opus = rows[f"{name} {fmt}"], rows[f"{name} opus"]["total_s"]
                ratio = row["total_s"] / opus
                line += f"{row['first_byte_s']:>14.3f}s{row['total_s']:>8.2f}s{ratio:>8.2f}"
            print(line)
    return results
