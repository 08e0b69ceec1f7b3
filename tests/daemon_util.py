"""Helpers to run the daemon in-process or as a real process, and to talk to it over HTTP."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf

from msgvoice.compose import DaemonParts
from msgvoice.config import load
from msgvoice.daemon import Daemon
from msgvoice.net import tls
from tests.conftest import REPO, isolate

FAULT_ENGINE = "tests.fault_engine:FaultEngine"
FINAL = ("done", "failed", "superseded")


Speech = tuple[DaemonParts, httpx.AsyncClient]
"""A running daemon's parts and an HTTP client of it."""


@contextlib.asynccontextmanager
async def shared_daemon(folder: Path) -> AsyncIterator[Speech]:
    """`running`, isolated as every test is (`isolate`), for a module whose tests only ask it
    for speech: one daemon and worker start instead of one per test."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        async with running(isolate(folder, monkeypatch)) as parts:
            yield parts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def running(state: Path, **env: str) -> AsyncIterator[tuple[DaemonParts, httpx.AsyncClient]]:
    """A daemon in this process on an ephemeral port, with its lane and channels running; `env`
    is set in the real environment for its lifetime (the worker inherits it)."""
    settings = {"MSGVOICE_STATE_DIR": str(state), "MSGVOICE_HTTP_PORT": "0", **env}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        config = load(None, os.environ)
        async with (
            Daemon(config) as daemon,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{daemon.parts.http.port}", timeout=30, verify=tls()
            ) as client,
        ):
            yield daemon.parts, client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def wait_job(client: httpx.AsyncClient, job_id: str, within: float = 60) -> dict[str, Any]:
    """The job once it reaches a final state (the daemon holds each request until then, or
    for at most 20 s: `?wait=`)."""
    deadline = time.monotonic() + within
    while True:
        wait = min(max(deadline - time.monotonic(), 0.0), 20.0)
        job: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}?wait={wait:.2f}")).json()
        if job["state"] in FINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck in {job['state']}"


async def outbox(client: httpx.AsyncClient, chat_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await client.get(f"/v1/chats/{chat_id}/outbox")).json()["items"]
    return items


class DaemonProcess:
    """`msgvoice run` as a real process on a free port."""

    def __init__(self, state: Path, **env: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "MSGVOICE_STATE_DIR": str(state),
            "MSGVOICE_HTTP_PORT": str(self.port),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, within: float = 30, preexec: Callable[[], None] | None = None) -> DaemonProcess:
        """Start it (`preexec` runs in the child first: limits) and wait until it answers."""
        log = open(self.env["MSGVOICE_STATE_DIR"] + ".log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "msgvoice", "run"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=log,
            preexec_fn=preexec,  # noqa: PLW1509 (a resource limit, set before exec)
        )
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1, verify=tls()).status_code == 200:
                    return self
            assert self.proc.poll() is None, "daemon exited at start"
            time.sleep(0.05)
        raise AssertionError("daemon did not come up")

    def wait_health(self, predicate: Callable[[dict[str, Any]], bool], within: float = 60) -> None:
        """Poll /healthz until `predicate` holds for its facts."""
        deadline = time.monotonic() + within
        while not predicate(httpx.get(self.url + "/healthz", timeout=5, verify=tls()).json()):
            assert time.monotonic() < deadline, "the daemon did not reach that state in time"
            time.sleep(0.02)

    def worker_pid(self) -> int:
        return int(
            httpx.get(self.url + "/healthz", timeout=5, verify=tls()).json()["worker"]["pid"]
        )

    def signal(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


@contextlib.contextmanager
def engine_daemon(state: Path, **env: str) -> Iterator[DaemonProcess]:
    """`msgvoice run` whose worker has loaded its engine (a model engine takes seconds, so a
    test module shares one); stopped with SIGTERM, which must drain cleanly."""
    daemon = DaemonProcess(state, **env).start(within=60)
    try:
        daemon.wait_health(lambda h: h["worker"]["state"] == "ready", within=240)
        yield daemon
    finally:
        assert daemon.signal(signal.SIGTERM) == 0


def speak(daemon: DaemonProcess, text: str, **fields: Any) -> tuple[Any, int]:
    """One /v1/audio/speech request (wav unless asked otherwise); the audio decoded."""
    body = {"model": "msgvoice", "input": text, "response_format": "wav", **fields}
    answer = httpx.post(daemon.url + "/v1/audio/speech", json=body, timeout=120, verify=tls())
    assert answer.status_code == 200, answer.text
    samples, rate = sf.read(io.BytesIO(answer.content), dtype="float32")
    return samples, int(rate)
