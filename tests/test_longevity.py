"""Running for months: a full disk, retention, a lane that cannot die, clean input."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from msgvoice.chat import storage
from msgvoice.chat.retention import forget_before
from msgvoice.chat.storage import Storage
from tests.conftest import until
from tests.daemon_util import FAULT_ENGINE, outbox, running, wait_job


@contextlib.contextmanager
def small_filesystem(path: Path, size_mb: int) -> Iterator[Path]:
    """A size-limited tmpfs at `path` (skips where this test may not mount one)."""
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(root: Path, leave_kb: int) -> Path:
    """Take all but `leave_kb` of the file system's free space."""
    filler = root / "filler"
    free = os.statvfs(root).f_bavail * os.statvfs(root).f_frsize
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, free - leave_kb * 1024))
    return filler


async def test_a_full_disk_is_a_state_not_a_crash(tmp_path: Path) -> None:
    """State dir on a 16 MB tmpfs: fill it and the daemon stays up, /healthz says degraded
    with the reason, new /tts gets 507 with an error; free the space and it recovers by
    itself: the next /tts is delivered, and the journal passes sqlite's integrity check."""
    with small_filesystem(tmp_path / "small", 16) as root:
        state = root / "state"
        env = {"MSGVOICE_RETENTION_MIN_FREE_MB": "2"}
        async with running(state, **env) as (daemon, client):
            first = await client.post("/v1/messages", json={"chat_id": "d", "text": "/tts 你好"})
            await wait_job(client, first.json()["jobs"][0])
            filler = fill(root, leave_kb=256)

            async def degraded() -> bool:
                return (await client.get("/healthz")).json()["status"] == "degraded"

            await until(degraded)
            health = (await client.get("/healthz")).json()
            body = {"chat_id": "d", "text": "/tts 满了"}
            refused = await client.post("/v1/messages", json=body)
            assert refused.status_code == 507 and "cannot store" in refused.json()["error"]
            assert "MB free" in health["reason"]
            filler.unlink()

            async def healthy() -> bool:
                return (await client.get("/healthz")).json()["status"] == "ok"

            await until(healthy)
            body = {"chat_id": "d", "text": "/tts 好了"}
            again = await client.post("/v1/messages", json=body)
            job = await wait_job(client, again.json()["jobs"][0])
            assert job["state"] == "done"
            assert daemon.journal.integrity() == "ok"
        with sqlite3.connect(state / "msgvoice.sqlite3") as db:  # after the daemon closed it
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_looking_at_the_free_space_at_intake_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Intake's own look at the free space: a state dir that cannot be looked at (gone, or no
    file descriptors left) refuses nothing and raises nothing (the watch says what is wrong);
    under the floor it refuses with the figures, and it looks at most once a second."""
    gone = Storage(tmp_path / "gone", min_free_mb=1)
    assert gone.refusal() is None and not gone.full
    floor = Storage(tmp_path, min_free_mb=1e12)  # more than any disk has
    reason = floor.refusal()
    assert reason is not None and "under the" in reason and floor.times_full == 1
    clock = [1000.0]
    monkeypatch.setattr(storage, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    roomy = Storage(tmp_path, min_free_mb=0)
    assert roomy.refusal() is None
    roomy.min_free_mb = 1e12
    clock[0] += 0.9  # within the second: not looked at again
    assert roomy.refusal() is None
    clock[0] += 0.1
    assert roomy.refusal() is not None


async def test_a_job_that_meets_a_full_disk_waits_and_is_delivered(tmp_path: Path) -> None:
    """A job whose voice note cannot be written for lack of space is not failed: it waits,
    journalled, and is delivered once there is room again."""
    with small_filesystem(tmp_path / "small", 16) as root:
        state = root / "state"
        env = {"MSGVOICE_RETENTION_MIN_FREE_MB": "0.01", "MSGVOICE_TTS_FORMAT": "wav"}
        async with running(state, **env) as (daemon, client):
            warm = await client.post("/v1/messages", json={"chat_id": "w", "text": "/tts 热身"})
            await wait_job(client, warm.json()["jobs"][0])
            filler = fill(root, leave_kb=64)
            long_text = "今天天气很好，我们一起去公园散步吧。" * 20
            posted = await client.post(
                "/v1/messages", json={"chat_id": "w", "text": f"/tts {long_text}"}
            )
            job_id = posted.json()["jobs"][0]

            async def parked() -> bool:
                return daemon.storage.full

            await until(parked)
            assert daemon.journal.job(job_id).state in ("queued", "running")  # type: ignore[union-attr]
            filler.unlink()
            job = await wait_job(client, job_id)
    assert job["state"] == "done" and job["audio"]["duration_s"] > 10


async def test_retention_keeps_voice_notes_within_their_limit(clean_env: Path) -> None:
    """With a tiny audio limit and no grace, delivered voice notes beyond the limit are removed
    oldest first (with what was made from them), and the newest stays fetchable."""
    env = {"MSGVOICE_RETENTION_AUDIO_MAX_MB": "0.05", "MSGVOICE_RETENTION_GRACE_S": "0"}
    async with running(clean_env, **env) as (daemon, client):
        jobs = []
        for i in range(6):
            posted = await client.post(
                "/v1/messages", json={"chat_id": "r", "text": f"/tts 第{i}条消息。"}
            )
            jobs.append(await wait_job(client, posted.json()["jobs"][0]))
        swept = daemon.retention.run()
        kept = sorted(p.name for p in (clean_env / "audio").iterdir())
        newest = await client.get(jobs[-1]["audio"]["url"])
    assert swept.files >= 1 and daemon.retention.audio_mb() <= 0.05 + 0.03
    assert f"{jobs[-1]['id']}.ogg" in kept and f"{jobs[0]['id']}.ogg" not in kept
    assert newest.status_code == 200


async def test_old_jobs_leave_the_journal(clean_env: Path) -> None:
    """Finished jobs older than jobs_days leave the journal with their outbox items."""
    async with running(clean_env) as (daemon, client):
        posted = await client.post("/v1/messages", json={"chat_id": "o", "text": "/tts 旧的"})
        job_id = (await wait_job(client, posted.json()["jobs"][0]))["id"]
        removed = forget_before(daemon.journal, [], int(time.time() * 1000) + 1000)
        assert removed >= 2 and daemon.journal.job(job_id) is None
        assert await outbox(client, "o") == []


async def test_an_exception_in_the_failure_path_does_not_stop_the_lane(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job fails and writing its failure notice raises too: logged once with its
    traceback, counted, and the next job is served."""
    async with running(clean_env, MSGVOICE_TTS_ENGINE=FAULT_ENGINE) as (daemon, client):
        real_fail = daemon.journal.fail
        calls = []

        def broken(*args: Any, **kwargs: Any) -> bool:
            calls.append(args)
            if len(calls) == 1:
                raise RuntimeError("injected: the notice path broke")
            return real_fail(*args, **kwargs)

        daemon.journal.fail = broken  # type: ignore[method-assign]  # the injected fault
        bad = await client.post("/v1/messages", json={"chat_id": "x", "text": "/tts [error] 坏"})
        good = await client.post("/v1/messages", json={"chat_id": "x", "text": "/tts 好"})
        job = await wait_job(client, good.json()["jobs"][0])
        bad_job = (await client.get(f"/v1/jobs/{bad.json()['jobs'][0]}")).json()
        metrics = (await client.get("/metrics")).text
    assert job["state"] == "done" and bad_job["state"] == "failed"
    assert caplog.text.count("injected: the notice path broke") >= 1
    assert daemon.lane.mishaps == 1 and "msgvoice_jobs_total" in metrics


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"chat_id": "a", "text": "\\ud800"}', "text"),
        ('{"chat_id": "\\ud800", "text": "hi"}', "chat_id"),
        ('{"chat_id": "a\\u0000b", "text": "hi"}', "chat_id"),
        ('{"chat_id": "a\\nb", "text": "hi"}', "chat_id"),
        ('{"chat_id": "' + "x" * 300 + '", "text": "hi"}', "chat_id"),
        ('{"chat_id": "a", "text": "hi", "sender": "bob\\r\\n"}', "sender"),
    ],
)
async def test_bad_text_and_ids_are_400s_naming_the_field(
    clean_env: Path, body: str, field: str
) -> None:
    """A lone surrogate, control characters or an over-long id: 400 naming the field, never
    a 500, and nothing journalled."""
    async with running(clean_env) as (daemon, client):
        answer = await client.post(
            "/v1/messages", content=body.encode(), headers={"Content-Type": "application/json"}
        )
        counts = daemon.journal.counts()
    assert answer.status_code == 400 and field in answer.json()["error"]
    assert counts == {}


async def test_chat_app_ids_with_control_characters_are_not_journalled(clean_env: Path) -> None:
    """An id from a chat app that is unfit (a newline in an iMessage handle) is rejected and
    logged; nothing of that message reaches the journal."""
    from msgvoice.chat.port import Incoming  # noqa: PLC0415

    async with running(clean_env) as (daemon, _):
        outcome = await daemon.router.message(Incoming("im:1", "/tts hi", "evil\nsender"))
        assert outcome.ignored and daemon.journal.counts() == {}
        assert not daemon.journal.known_chat("im:1")


HEAP_BURST = """
import threading
import psutil
from msgvoice.speech.process_memory import give_back_heap

def burst(kept):
    held = [bytes(2000) for _ in range(40_000)]  # ~80 MB in this thread's arena
    kept.append(held[::50])  # a few survivors pin the arena's top, as a burst's leftovers do

kept = []
threads = [threading.Thread(target=burst, args=(kept,)) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
me = psutil.Process()
before = me.memory_info().rss
give_back_heap()
print(before >> 20, me.memory_info().rss >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's arenas are Linux's")
def test_a_burst_s_freed_heap_goes_back_to_the_kernel() -> None:
    """Freed memory stays in glibc's per-thread arenas until the daemon hands it back (it does
    when it goes idle; the bench shows the daemon's RSS after bursts)."""
    done = subprocess.run(
        [sys.executable, "-c", HEAP_BURST], capture_output=True, text=True, timeout=60, check=True
    )
    before, after = map(int, done.stdout.split())
    assert after < before - 60, (before, after)
