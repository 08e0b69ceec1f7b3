"""What the bench sections share: the texts, medians, peak memory, a daemon to ask."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from msgvoice.speech.process_memory import process_tree_mb

REPO = Path(__file__).resolve().parent.parent


TEXTS = {
    "short": "你好",
    "medium": "那真是太好了！保持这种好心情，今天注定会是个充满阳光的日子。",
    "300ch": (
        "清晨的阳光洒在窗台上，城市慢慢醒来。街角的早餐店已经排起了长队，"
        "热气腾腾的包子和豆浆是许多人一天的开始。公交车一辆接一辆地驶过，"
        "车上的人们有的在看手机，有的在闭目养神。学校门口，孩子们背着书包，"
        "和父母挥手告别。公园里，老人们打着太极拳，动作缓慢而有力。"
        "年轻人戴着耳机跑步，汗水浸湿了衣衫。中午时分，写字楼里的白领们涌向附近的餐馆，"
        "讨论着工作和生活。下午的阳光变得柔和，咖啡馆里坐满了聊天和工作的人。"
        "傍晚，晚霞染红了天边，人们陆续回家。厨房里飘出饭菜的香味，"
        "一家人围坐在桌前，分享着一天的见闻。夜深了，城市的灯光依然明亮。"
    ),
}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class PeakRss:
    """Sample the RSS of a process tree every 10 ms; remember the peaks."""

    def __init__(self, pid: int) -> None:
        self.pid, self.main_mb, self.tree_mb = pid, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                main = root.memory_info().rss
                children = root.children(recursive=True)
            except psutil.Error:
                break  # the process is gone
            tree = main
            for child in children:  # a worker's eSpeak child may be gone by now
                with contextlib.suppress(psutil.Error):
                    tree += child.memory_info().rss
            self.main_mb = max(self.main_mb, main / 2**20)
            self.tree_mb = max(self.tree_mb, tree / 2**20)
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def start_daemon(tmp: Path, repo: Path = REPO, **extra: str) -> tuple[subprocess.Popen[bytes], str]:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MSGVOICE_STATE_DIR": str(tmp / "daemon"), "MSGVOICE_HTTP_PORT": str(port)}
    env |= {"PYTHONPATH": str(repo), **extra}
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgvoice", "run"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("daemon did not start")


FINAL = ("done", "failed", "superseded")


async def until_final(client: httpx.AsyncClient, job_ids: list[str]) -> None:
    """Until every job is final. The daemon answers each request when its job is (`?wait=`);
    an older one answers at once and is asked again 2 ms later."""
    for job_id in job_ids:
        while True:
            job = (await client.get(f"/v1/jobs/{job_id}?wait=50")).json()
            if job["state"] in FINAL:
                break
            await asyncio.sleep(0.002)


def tree_mb(pid: int) -> float:
    """The largest worker's memory (a daemon's child, as the supervisor counts it: PSS on
    Linux, its forked eSpeak child included)."""
    try:
        kids = psutil.Process(pid).children(recursive=False)
    except psutil.Error:
        return 0.0
    return max((process_tree_mb(k.pid) for k in kids), default=0.0)


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def daemon_memory(pid: int) -> dict[str, float]:
    root = psutil.Process(pid)
    workers = [process_tree_mb(c.pid) for c in root.children(recursive=False)]
    return {"daemon_rss_mb": root.memory_info().rss / 2**20, "worker_rss_max_mb": max(workers)}


async def stream(
    http: httpx.AsyncClient, text: str, fmt: str = "pcm", stream: bool = True
) -> tuple[float, float, bytes]:
    """(seconds to the first audio bytes, seconds in all, body) of one speech request."""
    body = {"model": "msgvoice", "input": text, "response_format": fmt, "stream": stream, "seed": 1}
    started = time.perf_counter()
    first, chunks = 0.0, []
    async with http.stream("POST", "/v1/audio/speech", json=body) as response:
        async for chunk in response.aiter_bytes():
            if chunk and not first:
                first = time.perf_counter() - started
            chunks.append(chunk)
    return first, time.perf_counter() - started, b"".join(chunks)
