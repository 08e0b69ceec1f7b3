"""Prometheus metrics on a registry of the daemon's own (no module-level state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from msgvoice.chat.journal import Journal
from msgvoice.chat.port import Job
from msgvoice.speech.supervisor import Supervisor

LLM_STATES = ("ready", "cold", "warming", "down")


@dataclass(frozen=True)
class Live:
    """Figures read at scrape time from their owners."""

    workers: list[Supervisor]
    depth: Callable[[], int]
    """Jobs waiting in the lane."""
    llm: Callable[[], dict[str, Any] | None]
    """The emotion LLM's facts (Analyser.facts), None without one."""
    superseded: Callable[[], int]
    """Automatic replies replaced while queued."""
    refused: Callable[[], int]
    """Outbox items the chat apps refused for good."""
    task_restarts: Callable[[], dict[str, int]]
    """Daemon tasks restarted after a failure, by name."""


class _Live(Collector):
    def __init__(self, live: Live) -> None:
        self.live = live

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "msgvoice_worker_restarts", "Worker restarts by reason", labels=["worker", "reason"]
        )
        rss = GaugeMetricFamily(
            "msgvoice_worker_rss_bytes", "Worker memory (footprint on macOS)", labels=["worker"]
        )
        jobs = CounterMetricFamily(
            "msgvoice_worker_jobs", "Worker requests completed", labels=["worker"]
        )
        for n, worker in enumerate(self.live.workers):
            for reason, count in worker.restarts.items():
                restarts.add_metric([str(n), reason], count)
            rss.add_metric([str(n)], worker.rss_mb() * 2**20)
            jobs.add_metric([str(n)], worker.jobs_done)
        yield from (restarts, rss, jobs)
        yield GaugeMetricFamily(
            "msgvoice_queue_depth", "Jobs waiting in the synthesis lane", value=self.live.depth()
        )
        yield CounterMetricFamily(
            "msgvoice_outbox_refused",
            "Outbox items a chat app refused for good (blocked, kicked, unknown chat)",
            value=self.live.refused(),
        )
        yield CounterMetricFamily(
            "msgvoice_jobs_superseded_before_run",
            "Automatic replies replaced while queued",
            value=self.live.superseded(),
        )
        tasks = CounterMetricFamily(
            "msgvoice_task_restarts",
            "Daemon tasks restarted after a failure (each logged with its traceback)",
            labels=["task"],
        )
        for task, count in self.live.task_restarts().items():
            tasks.add_metric([task], count)
        yield tasks
        yield from self._llm()

    def _llm(self) -> Iterator[Metric]:
        facts = self.live.llm() or {}
        calls = CounterMetricFamily(
            "msgvoice_llm_calls", "Emotion LLM calls by outcome", labels=["outcome"]
        )
        for outcome, count in facts.get("calls", {}).items():
            calls.add_metric([outcome], count)
        yield calls
        if facts:
            state = GaugeMetricFamily(
                "msgvoice_emotion_llm_state",
                "The emotion LLM's state (1 for the current one): replies ask it only when ready"
                " or cold",
                labels=["state"],
            )
            for name in LLM_STATES:
                state.add_metric([name], float(facts["state"] == name))
            yield state


class Metrics:
    """The daemon's metrics; `on_job` is a lane listener."""

    def __init__(
        self,
        journal: Journal,
        live: Live,
    ) -> None:
        self.journal = journal
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "msgvoice_jobs", "Jobs by kind and outcome", ["kind", "outcome"], registry=self.registry
        )
        self.synthesis = Histogram(
            "msgvoice_synthesis_seconds",
            "Wall time of a job's synthesis",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.rtf = Histogram(
            "msgvoice_rtf",
            "Synthesis time over audio duration",
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.llm_latency = Histogram(
            "msgvoice_emotion_seconds",
            "Time to resolve emotion",
            buckets=(0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )
        self.registry.register(_Live(live))

    def on_job(self, job: Job, state: str) -> None:
        """Count a job outcome; time the ones that produced audio."""
        self.jobs.labels(job.kind, state).inc()
        done = self.journal.job(job.id)
        if done is None or not done.timings or not done.duration_s:
            return
        seconds = done.timings.get("total_ms", 0.0) / 1000
        self.synthesis.observe(seconds)
        self.rtf.observe(seconds / done.duration_s)
        self.llm_latency.observe(done.timings.get("emotion_ms", 0.0) / 1000)

    def render(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))
