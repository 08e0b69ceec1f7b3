"""The real supervisor against the real worker program running the fault-injection engine."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from msgvoice.config import WorkerConfig
from msgvoice.speech import process_memory
from msgvoice.speech.supervisor import Supervisor, SynthRequest, WorkerError, WorkerUnavailable

FAULT_ENGINE = "tests.fault_engine:FaultEngine"


def make(tmp_path: Path, engine: dict[str, Any] | None = None, **worker: Any) -> Supervisor:
    config = WorkerConfig(
        **{
            "timeout_base_s": 3.0,
            "timeout_per_char_s": 0.0,
            "term_grace_s": 0.5,
            "backoff_initial_s": 0.1,
            "rss_poll_s": 0.1,
            **worker,
        }
    )
    options = {"marker_dir": str(tmp_path), **(engine or {})}
    return Supervisor(config, FAULT_ENGINE, options)


def req(text: str, job: str = "j") -> SynthRequest:
    return SynthRequest(job, text)


async def wait_for(predicate: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def in_engine(tmp_path: Path, text: str) -> None:
    """Wait until the engine has started speaking `text` (the fault engine logs each start)."""
    log = tmp_path / "started.log"
    await wait_for(lambda: log.exists() and text in log.read_text(encoding="utf-8").splitlines())


async def test_plain_job_returns_the_engines_audio(tmp_path: Path) -> None:
    """A job comes back as float32 samples at the engine's rate, 50 ms per character."""
    async with make(tmp_path) as sup:
        result = await sup.synthesize(req("hello"))
    assert result.sample_rate == 16_000
    assert result.samples.size == 16_000 * 0.05 * 5
    assert float(abs(result.samples).max()) == pytest.approx(0.4, abs=1e-3)
    assert result.attempts == 1


async def test_hang_is_cut_at_the_timeout_and_the_retry_delivers(tmp_path: Path) -> None:
    """A hung job is killed at its timeout; the job is retried on a new worker and delivered."""
    async with make(tmp_path, timeout_base_s=1.0) as sup:
        first_pid = sup.pid
        started = time.monotonic()
        result = await sup.synthesize(req("[hang#h1] hi"))
        elapsed = time.monotonic() - started
        assert result.attempts == 2
        assert sup.restarts["timeout"] == 1
        assert sup.pid != first_pid
        assert not psutil.pid_exists(first_pid or 0)
        assert elapsed < 1.0 + 0.5 + 5.0  # timeout + grace + a generous restart margin
        assert (await sup.synthesize(req("next"))).attempts == 1


async def test_job_that_hangs_twice_fails_clearly_and_the_next_succeeds(tmp_path: Path) -> None:
    """A job that hangs on both attempts fails with a reason; the worker serves the next job."""
    async with make(tmp_path, timeout_base_s=0.5) as sup:
        with pytest.raises(WorkerError, match="timeout"):
            await sup.synthesize(req("[hang] forever"))
        assert sup.restarts["timeout"] == 2
        assert (await sup.synthesize(req("fine"))).samples.size > 0


async def test_crash_mid_job_is_retried_and_delivered(tmp_path: Path) -> None:
    """A worker that dies mid-job is replaced and the job delivered on the retry."""
    async with make(tmp_path) as sup:
        first_pid = sup.pid
        result = await sup.synthesize(req("[crash#c1] hello"))
        assert result.attempts == 2 and result.samples.size > 0
        assert sup.restarts["crash"] == 1 and sup.pid != first_pid
        assert "exited with code 11" in sup.last_error


async def test_garbage_on_the_protocol_counts_as_a_crash(tmp_path: Path) -> None:
    """Output that is not JSON gets the worker replaced and the job retried."""
    async with make(tmp_path) as sup:
        result = await sup.synthesize(req("[garbage#g1] hello"))
        assert result.attempts == 2
        assert sup.restarts["crash"] == 1 and "garbage" in sup.last_error


async def test_engine_error_fails_the_job_without_a_restart(tmp_path: Path) -> None:
    """An engine that refuses a text fails that job only; the same worker goes on."""
    async with make(tmp_path) as sup:
        pid = sup.pid
        with pytest.raises(WorkerError, match="refused this text"):
            await sup.synthesize(req("[error] x"))
        assert sum(sup.restarts.values()) == 0 and sup.pid == pid
        assert (await sup.synthesize(req("ok"))).samples.size > 0


async def test_leaking_worker_is_recycled_after_delivering_the_job(tmp_path: Path) -> None:
    """A job that pushes memory over the limit is delivered, then the worker is replaced."""
    async with make(tmp_path, rss_limit_mb=150) as sup:
        first_pid = sup.pid
        result = await sup.synthesize(req("[leak:250] big"))
        assert result.attempts == 1 and result.samples.size > 0
        assert sup.restarts["rss"] == 1
        await wait_for(lambda: sup.pid not in (None, first_pid))
        assert not psutil.pid_exists(first_pid or 0)
        assert sup.rss_mb() < 150


async def test_hard_ceiling_kills_a_job_that_balloons(tmp_path: Path) -> None:
    """Memory over the hard ceiling during a job kills the worker; the retry delivers."""
    async with make(tmp_path, rss_hard_limit_mb=200) as sup:
        result = await sup.synthesize(req("[bloat:300#b1] huge"))
        assert result.attempts == 2 and sup.restarts["hard_rss"] == 1


async def test_max_jobs_recycles_the_worker(tmp_path: Path) -> None:
    """With max_jobs=2 the worker is replaced after its second job."""
    async with make(tmp_path, max_jobs=2) as sup:
        first_pid = sup.pid
        for _ in range(2):
            await sup.synthesize(req("a"))
        await wait_for(lambda: sup.pid not in (None, first_pid))
        assert sup.restarts["jobs"] == 1
        assert (await sup.synthesize(req("b"))).attempts == 1


async def test_worker_dying_at_start_backs_off_then_fails_fast(tmp_path: Path) -> None:
    """A worker that cannot start is retried with growing delays, then marked failed; later
    jobs fail at once instead of spinning."""
    sup = make(tmp_path, {"exit_at_start": True}, max_start_failures=3, backoff_initial_s=0.2)
    started = time.monotonic()
    async with sup:
        assert sup.state == "failed" and sup.starts.failures == 3
        assert time.monotonic() - started >= 0.2 + 0.4  # two back-off waits happened
        quick = time.monotonic()
        with pytest.raises(WorkerUnavailable, match="failing to start"):
            await sup.synthesize(req("hello"))
        assert time.monotonic() - quick < 0.5
        assert sup.starts.failures == 3  # no new attempt before the back-off ran out


async def test_ready_timeout_counts_as_a_failed_start(tmp_path: Path) -> None:
    """A worker slower to load than ready_timeout_s is killed and reported."""
    sup = make(tmp_path, {"load_s": 5}, ready_timeout_s=0.5, max_start_failures=1)
    async with sup:
        assert sup.state == "failed" and "not ready within" in sup.last_error
        assert sup.pid is None


async def test_lazy_start_waits_for_the_first_job(tmp_path: Path) -> None:
    """With eager off, no worker runs until a job needs one."""
    async with make(tmp_path, eager=False) as sup:
        assert sup.pid is None
        await sup.synthesize(req("x"))
        assert sup.pid is not None


async def test_stopping_leaves_no_process_behind(tmp_path: Path) -> None:
    """Leaving the supervisor stops the worker, even one stuck in a job."""
    sup = make(tmp_path, timeout_base_s=30)
    async with sup:
        pid = sup.pid
        job = asyncio.create_task(sup.synthesize(req("[hang] stuck")))
        await in_engine(tmp_path, "[hang] stuck")
        job.cancel()
    assert pid is not None and not psutil.pid_exists(pid)


def test_timeout_grows_with_text_and_is_capped_for_auto_replies(tmp_path: Path) -> None:
    """Job timeout is base + per-char × length, and never above the request's cap."""
    sup = make(tmp_path, timeout_base_s=10, timeout_per_char_s=0.5)
    assert sup.job_timeout_s(req("x" * 100)) == 60
    assert sup.job_timeout_s(SynthRequest("a", "x" * 100, timeout_cap_s=20)) == 20


@pytest.mark.slow
async def test_soak_100_jobs_with_random_faults_loses_nothing(tmp_path: Path) -> None:
    """100 jobs with random crashes, hangs and garbage: every job ends done, and the restart
    counters equal the faults injected."""
    rng = random.Random(1234)
    faults = {"crash": 0, "hang": 0, "garbage": 0}
    texts = []
    for i in range(100):
        kind = rng.choices(["ok", "crash", "hang", "garbage"], [80, 10, 4, 6])[0]
        if kind == "ok":
            texts.append(f"job {i}")
        else:
            faults[kind] += 1
            texts.append(f"[{kind}#t{i}] job {i}")
    async with make(tmp_path, timeout_base_s=1.0) as sup:
        done = 0
        for i, text in enumerate(texts):
            result = await sup.synthesize(req(text, f"soak{i}"))
            done += result.samples.size > 0
        assert done == 100 and sup.jobs_done == 100
        assert sup.restarts["crash"] == faults["crash"] + faults["garbage"]
        assert sup.restarts["timeout"] == faults["hang"]


async def test_cancelled_job_never_hands_its_audio_to_the_next(tmp_path: Path) -> None:
    """A job cancelled mid-synthesis retires its worker, so the next job gets its own audio."""
    async with make(tmp_path) as sup:
        slow = asyncio.create_task(sup.synthesize(req("[slow:1] a long one here")))
        await in_engine(tmp_path, "[slow:1] a long one here")
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        result = await sup.synthesize(req("ab"))
        assert result.samples.size == 16_000 * 0.05 * 2
        assert result.attempts == 1 and sup.restarts["crash"] == 0  # no mix-up to recover from


def test_a_worker_s_tree_is_found_as_psutil_finds_it() -> None:
    """The quick path through /proc's child lists finds the same descendants (a worker's
    pristine eSpeak child, a torch engine's helpers) as psutil's scan of every process; far
    under a limit the quick RSS bound stands in for PSS, near it the exact figure is read."""
    code = "import os, time\nif os.fork() == 0:\n    os.fork()\ntime.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    root = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 10
        while len(root.children(recursive=True)) < 2:
            assert time.monotonic() < deadline, "the grandchild never came"
        found = {p.pid for p in process_memory._tree(root)}
        assert found == {proc.pid, *(p.pid for p in root.children(recursive=True))}
        exact = process_memory.process_tree_mb(proc.pid)  # PSS: shared pages counted once
        far_under = process_memory.process_tree_mb(proc.pid, over=10_000)  # RSS: a quick bound
        near = process_memory.process_tree_mb(proc.pid, over=1)  # over it: the exact figure
        assert 0 < exact < far_under and near < far_under
    finally:
        for each in [*root.children(recursive=True), root]:
            each.kill()
        proc.wait()


async def test_a_pool_gives_a_request_to_the_warm_worker_unless_it_cannot_start() -> None:
    """A lone request goes to the worker freed last (its caches are warm), not round the
    pool; never to one that cannot start now while another free one can; and requests at
    once take every free worker, the rest waiting their turn. The pool learns the engine's
    rate from its first answer."""
    from msgvoice.speech.chain import WorkerPool  # noqa: PLC0415

    busy: list[str] = []
    two_busy = asyncio.Event()

    class Said(str):  # a synthesis, known by the worker that made it
        sample_rate = 16_000

    class Worker:
        def __init__(self, name: str) -> None:
            self.name, self.state, self.engine = name, "ready", "espeak"
            self.hold = asyncio.Event()
            self.hold.set()

        async def synthesize(self, request: SynthRequest) -> str:
            busy.append(self.name)
            if len(busy) == 2:
                two_busy.set()
            await self.hold.wait()
            return Said(self.name)

    a, b = Worker("a"), Worker("b")
    pool = WorkerPool([a, b])  # type: ignore[list-item]
    assert pool.rate == 0
    warm = await pool.synthesize(req("x"))
    assert pool.rate == 16_000  # the engine's, as its answer gave it
    assert [await pool.synthesize(req("x")) for _ in range(4)] == [warm] * 4
    by_name = {"a": a, "b": b}
    other = "a" if warm == "b" else "b"
    by_name[warm].state = "failed"  # freed last, but it cannot start
    assert await pool.synthesize(req("x")) == other
    by_name[warm].state, by_name[other].state = "ready", "backoff"  # now `other` was
    assert await pool.synthesize(req("x")) == warm
    by_name[other].state = "ready"
    a.hold.clear()
    b.hold.clear()
    busy.clear()
    two_busy.clear()
    three = [asyncio.create_task(pool.synthesize(req("x"))) for _ in range(3)]
    await asyncio.wait_for(two_busy.wait(), 10)  # two requests hold a worker each
    assert sorted(busy) == ["a", "b"] and not any(t.done() for t in three)
    a.hold.set()
    b.hold.set()
    assert sorted(await asyncio.gather(*three)) in (["a", "a", "b"], ["a", "b", "b"])
