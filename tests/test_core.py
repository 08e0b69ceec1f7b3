"""The chat wing in milliseconds: router, lane, journal and outbox pump over an in-memory
journal and a fake speaker (the end-to-end tests run the same rules through real workers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from msgvoice.channels.outbox import ChannelError, OutboxPump
from msgvoice.chat.journal import IN_MEMORY, Journal
from msgvoice.chat.lane import Lane
from msgvoice.chat.port import FINAL_STATES, Bell, Incoming, OutboxItem
from msgvoice.chat.router import Router
from msgvoice.config import Config
from msgvoice.speech.emotion import NEUTRAL, EmotionResult
from msgvoice.speech.speaker import SpeechJob, SpeechResult, WorkerError
from tests.conftest import until


class FakeSpeaker:
    """Speaks instantly unless told to hold a text; `[fail]` in a text fails like a worker."""

    def __init__(self) -> None:
        self.spoken: list[str] = []
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def hold(self, text: str) -> asyncio.Event:
        """Keep `text` in synthesis until the returned event is set."""
        self.gates[text] = asyncio.Event()
        return self.gates[text]

    async def speak(self, job: SpeechJob) -> SpeechResult:
        self.started.append(job.text)
        if job.text in self.gates:
            await self.gates[job.text].wait()
        if "[fail]" in job.text:
            raise WorkerError("synthesis failed twice (crash); giving up")
        self.spoken.append(job.text)
        emotion = EmotionResult("neutral", [NEUTRAL], NEUTRAL)
        return SpeechResult(job.out, job.fmt, 1.0, "fake", emotion, 1)


@contextlib.asynccontextmanager
async def chat_wing(
    tmp_path: Path, concurrency: int = 1
) -> AsyncIterator[tuple[Router, FakeSpeaker, Lane]]:
    """A router, lane and journal in memory, with the lane running."""
    journal = Journal(IN_MEMORY, Bell(), tmp_path)
    speaker = FakeSpeaker()
    lane = Lane(journal, speaker, tmp_path, "ogg", 10.0, concurrency=concurrency)
    router = Router(Config(), journal, lane, engine=lambda: ("fake", None))
    runner = asyncio.create_task(lane.run())
    try:
        yield router, speaker, lane
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        journal.close()


def settled(router: Router, jobs: list[str]) -> bool:
    return all((job := router.job(j)) is not None and job.state in FINAL_STATES for j in jobs)


def audio_jobs(router: Router, chat: str) -> list[str | None]:
    return [i.job_id for i in router.outbox(chat) or [] if i.kind == "audio"]


async def test_tts_jobs_of_a_chat_are_delivered_in_the_order_asked(tmp_path: Path) -> None:
    """Five /tts lines give five voice notes in the order asked."""
    async with chat_wing(tmp_path) as (router, _, _):
        jobs = [(await router.message(Incoming("c", f"/tts 第{i}条"))).jobs[0] for i in range(5)]
        await until(lambda: settled(router, jobs))
        assert audio_jobs(router, "c") == jobs


async def test_chats_run_side_by_side_but_a_chats_jobs_never_overtake(tmp_path: Path) -> None:
    """With room for three jobs at once, chat B is served while chat A's first job is held,
    but A's second job waits for A's first; everything is delivered in each chat's order."""
    async with chat_wing(tmp_path, concurrency=3) as (router, speaker, lane):
        gate = speaker.hold("甲一")
        a1, a2 = [
            (await router.message(Incoming("a", f"/tts {t}"))).jobs[0] for t in ("甲一", "甲二")
        ]
        b1 = (await router.message(Incoming("b", "/tts 乙一"))).jobs[0]
        await until(lambda: settled(router, [b1]))
        assert speaker.started == ["甲一", "乙一"] and lane.depth == 1
        gate.set()
        await until(lambda: settled(router, [a1, a2]))
        assert speaker.started == ["甲一", "乙一", "甲二"]
        assert audio_jobs(router, "a") == [a1, a2] and audio_jobs(router, "b") == [b1]


async def test_auto_replies_are_latest_wins_per_chat(tmp_path: Path) -> None:
    """While one auto reply runs, three more arrive: the queued ones never run, the running one
    finishes but is not sent, and only the last is delivered. Another chat is untouched."""
    async with chat_wing(tmp_path) as (router, speaker, _):
        await router.message(Incoming("a", "/mode voice audio"))
        await router.message(Incoming("b", "/mode voice audio"))
        gate = speaker.hold("回复0。")
        first = router.bot_reply("a", "回复0。").jobs[0]
        await until(lambda: speaker.started == ["回复0。"])
        later = [router.bot_reply("a", f"回复{i}。").jobs[0] for i in (1, 2, 3)]
        other = router.bot_reply("b", "别的。").jobs[0]
        gate.set()
        await until(lambda: settled(router, [first, *later, other]))
        assert [router.job(j).state for j in [first, *later]] == [
            "superseded",
            "superseded",
            "superseded",
            "done",
        ]
        assert speaker.spoken == ["回复0。", "回复3。", "别的。"]
        assert audio_jobs(router, "a") == [later[-1]] and audio_jobs(router, "b") == [other]
        assert router.superseded_at_submit == 2


async def test_a_failed_job_tells_the_chat_in_its_language(tmp_path: Path) -> None:
    """A job the speaker cannot do is failed with its reason, and the chat gets a notice."""
    async with chat_wing(tmp_path) as (router, _, _):
        await router.message(Incoming("e", "I write English"))
        job = (await router.message(Incoming("e", "/tts [fail] x"))).jobs[0]
        await until(lambda: settled(router, [job]))
        failed = router.job(job)
        assert failed is not None and failed.state == "failed" and "crash" in (failed.error or "")
        notice = (router.outbox("e") or [])[-1]
        assert notice.kind == "text" and (notice.text or "").startswith("Could not make")


async def test_resume_runs_open_latest_jobs_and_supersedes_stale_ones(tmp_path: Path) -> None:
    """Jobs a crash left open: a /tts and the latest auto reply run again; a stale auto reply
    that was running is superseded, never sent."""
    journal = Journal(IN_MEMORY, Bell(), tmp_path)
    tts, _ = journal.add_job("r", "tts", "说一句", None)
    stale, _ = journal.add_job("r", "auto", "旧的", None)
    journal.set_state(journal.job(stale), "running")
    latest, _ = journal.add_job("r", "auto", "新的", None)
    speaker = FakeSpeaker()
    lane = Lane(journal, speaker, tmp_path, "ogg", 10.0)
    assert lane.resume() == 2
    runner = asyncio.create_task(lane.run())
    try:
        await until(lambda: lane.depth == 0 and lane.running is None and len(speaker.spoken) == 2)
    finally:
        runner.cancel()
    assert speaker.spoken == ["说一句", "新的"]
    assert [journal.job(j).state for j in (tts, stale, latest)] == [
        "done",
        "superseded",
        "done",
    ]
    journal.close()


async def test_the_pump_backs_off_per_chat_keeps_order_and_never_resends(tmp_path: Path) -> None:
    """A transient failure holds back only its chat (doubling back-off, or the app's
    retry_after) while other chats are served; once the app accepts, every item goes exactly
    once, in its chat's order."""
    journal = Journal(IN_MEMORY, Bell(), tmp_path)
    router = Router(Config(), journal, None, engine=lambda: ("fake", None))
    for chat, text in (("tg:1", "一"), ("tg:1", "二"), ("tg:2", "甲"), ("tg:1", "三")):
        router.send_text(chat, text)
    now = [100.0]
    sent: list[str | None] = []
    failures = [ChannelError("502"), ChannelError("502"), ChannelError("429", retry_after_s=7)]

    async def send(item: OutboxItem) -> None:
        if item.text == "二" and failures:
            raise failures.pop(0)
        sent.append(item.text)

    pump = OutboxPump(router, "tg:", send, clock=lambda: now[0])
    assert await pump.drain() == 1.0 and sent == ["一", "甲"]  # chat 2 is not held up
    assert await pump.drain() == 1.0 and sent == ["一", "甲"]  # not due yet: not retried
    now[0] += 1.0
    assert await pump.drain() == 2.0
    now[0] += 2.0
    assert await pump.drain() == 7.0
    now[0] += 7.0
    assert await pump.drain() is None and sent == ["一", "甲", "二", "三"]
    assert await pump.drain() is None and sent == ["一", "甲", "二", "三"]
    assert router.pending("tg:") == []
    journal.close()


async def test_a_permanent_refusal_fails_the_item_and_the_pump_moves_on(tmp_path: Path) -> None:
    """A chat that blocked the bot: its item is marked failed with the reason, counted, not
    retried; its later items and other chats' items are still sent."""
    journal = Journal(IN_MEMORY, Bell(), tmp_path)
    router = Router(Config(), journal, None, engine=lambda: ("fake", None))
    for chat, text in (("tg:1", "被拉黑"), ("tg:2", "乙"), ("tg:1", "后来")):
        router.send_text(chat, text)
    sent: list[str | None] = []

    async def send(item: OutboxItem) -> None:
        if item.text == "被拉黑":
            raise ChannelError("403 Forbidden: bot was blocked by the user", permanent=True)
        sent.append(item.text)

    pump = OutboxPump(router, "tg:", send)
    assert await pump.drain() is None and sent == ["乙", "后来"]
    (refused,) = [i for i in router.outbox("tg:1") or [] if i.state == "failed"]
    assert refused.text == "被拉黑" and "blocked" in (refused.error or "")
    assert router.refused == 1 and router.pending("tg:") == []
    journal.close()


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("/mode voice on", "已设置语音模式：文字+语音"),
        ("/mode style 撒娇", "已设置风格：撒娇"),
        ("/mode speaker off", "已恢复默认音色"),
        ("/frob", "未知命令 /frob，发送 /help 查看可用命令"),
    ],
)
async def test_settings_commands_answer_in_text(tmp_path: Path, line: str, reply: str) -> None:
    """Settings commands change the chat and confirm in its outbox; no job is queued."""
    async with chat_wing(tmp_path) as (router, _, lane):
        outcome = await router.message(Incoming("s", line))
        assert outcome.jobs == [] and outcome.replies == [reply] and lane.depth == 0
        assert [i.text for i in router.outbox("s") or []] == [reply]


async def test_the_allow_list_and_non_text_messages(tmp_path: Path) -> None:
    """A chat not on the allow-list is ignored; a non-text message gets the text-only hint."""
    async with chat_wing(tmp_path) as (router, _, _):
        assert (await router.message(Incoming("x", "/help", "bob", ("alice",)))).ignored
        assert router.outbox("x") is None
        outcome = await router.message(Incoming("y", None, "alice", ("alice",)))
        assert outcome.replies[0].startswith("目前只支持文字消息")
