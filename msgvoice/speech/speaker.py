"""The speech wing's front door: text → segments → emotion → worker → encoded audio.

`Speaker.speak` writes a file (it appears only when complete); `Speaker.stream` yields a
response's bytes as each segment is encoded; both run one encode loop. A job of one segment
(most chat replies) is finished by the worker that speaks it, so several jobs encode side by
side in several processes. A longer job asks its segments ahead, one per worker; in a format
whose segments join (Opus, MP3, AAC: `Format.joins`) each is finished by its worker too and
joined here (`sinks.Finished`), in the others it is encoded here (a few jobs at a time:
`sinks.Turns`), each segment in a thread while workers speak the next. Segments take whichever
worker of the engine's pool is free, so chat jobs and API requests share the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import replace

from msgvoice.config import Config
from msgvoice.sound import audio
from msgvoice.sound.encoder import Encoder, EncodeSettings
from msgvoice.sound.files import AudioWriter
from msgvoice.speech import process_memory, text
from msgvoice.speech.chain import EngineChain
from msgvoice.speech.emotion import EmotionResult, Emotions, to_prosody
from msgvoice.speech.formats import FORMATS, Format, output_rate
from msgvoice.speech.job import Report, SpeechError, SpeechJob, SpeechResult, exhausted
from msgvoice.speech.sinks import Finished, Sink, Turns, encoded, finishing
from msgvoice.speech.supervisor import Synthesis, SynthRequest
from msgvoice.speech.text import speakable
from msgvoice.speech.worker_process import RequestRefused, WorkerError
from msgvoice.worker.protocol import OutputParams, Shape

__all__ = [
    "EmotionResult",
    "Report",
    "Speaker",
    "SpeechError",
    "SpeechJob",
    "SpeechResult",
    "WorkerError",
    "exhausted",
    "speakable",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (segments done, segments in all)."""
ENCODE_DRAIN_S = 30.0


class Speaker:
    """Turns text into audio through the supervised worker (or a fallback's)."""

    def __init__(self, config: Config, chain: EngineChain, emotions: Emotions) -> None:
        self.config = config
        self.chain = chain
        self.emotions = emotions
        self.shaping = audio.Shaping(
            config.audio.fade_ms, config.audio.gap_ms, config.audio.silence_db
        )
        self.encoding = EncodeSettings(config.audio.opus_complexity, config.audio.opus_bitrate_kbps)
        self._at_work = 0
        self._turns = Turns()

    def engines(self) -> list[str]:
        """The engines this speaker can use: the main one, then the fallbacks."""
        return self.chain.engines()

    def voices(self) -> list[str]:
        """The main engine's voice names, as its worker reported them."""
        return self.chain.voices()

    def voice_languages(self) -> dict[str, list[str]]:
        """The main engine's voices → the languages each speaks, where the engine says."""
        return self.chain.languages()

    def voice_named(self, name: str) -> str | None:
        """The main engine's spelling of voice `name` (see EngineChain.voice_named)."""
        return self.chain.voice_named(name)

    def segments(self, message: str, lead_clause: bool = False) -> list[str]:
        """The segments a message is spoken in (the opening clause alone first, with
        `lead_clause`); SpeechError when there is nothing to say."""
        limit = self.config.text.max_chars
        if len(message) > limit:
            raise SpeechError(f"text is {len(message)} characters; the limit is {limit}")
        pieces = text.segment(message, self.config.text.segment_chars)
        if not pieces:
            raise SpeechError("nothing to speak")
        if lead_clause:
            pieces[:1] = [p for p in text.lead(pieces[0]) if p]
        return pieces

    # -- the two ways out --------------------------------------------------------------------

    async def speak(self, job: SpeechJob, progress: Progress | None = None) -> SpeechResult:
        """Synthesise `job.text` into `job.out`; the file appears only when complete."""
        started = time.perf_counter()
        report = Report()

        def open_file(spoken: Synthesis) -> AudioWriter | Finished:
            if spoken.output is not None:
                return Finished(spoken.output, job.out, self._joining(job.fmt, spoken, False))
            rate = output_rate(job.fmt, spoken.sample_rate, self.config.audio.opus_rate_hz)
            return AudioWriter(job.out, job.fmt, rate, self.encoding)

        def tick(_data: bytes) -> None:
            if progress is not None:
                progress(len(report.engines), report.segments)

        with self._working():
            writer = await self._encode_loop(job, report, (job.fmt, False), open_file, tick)
            assert isinstance(writer, AudioWriter | Finished) and report.emotion is not None
            await asyncio.to_thread(writer.commit)
        timings = report.timings
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        if writer.duration_s:
            timings["rtf"] = timings["total_ms"] / 1000 / writer.duration_s
        engine = report.engines[-1]
        log.info(
            "spoke job=%s segments=%d chars=%d duration_s=%.2f engine=%s source=%s total_ms=%.0f",
            job.job_id,
            report.segments,
            len(job.text),
            writer.duration_s,
            engine,
            report.emotion.source,
            timings["total_ms"],
        )
        main = self.chain.pools[0].engine
        fallback = main if engine != main else None
        return SpeechResult(
            job.out,
            job.fmt,
            writer.duration_s,
            engine,
            report.emotion,
            report.segments,
            timings,
            fallback_from=fallback,
        )

    async def stream(
        self, job: SpeechJob, fmt: Format, streaming: bool
    ) -> AsyncGenerator[bytes, None]:
        """The job's audio as `fmt` bytes: chunk by chunk when `streaming` (first after the
        first segment), else one whole body. Errors before the first chunk are raised here
        (SpeechError for bad input, WorkerError for synthesis); later ones end the iteration
        early. Synthesis goes on while a slow client reads."""
        chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(job, fmt, streaming, chunks))
        try:
            while (item := await chunks.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    async def _produce(
        self,
        job: SpeechJob,
        fmt: Format,
        streaming: bool,
        chunks: asyncio.Queue[bytes | BaseException | None],
    ) -> None:
        pending: list[bytes] = []
        emit = chunks.put_nowait if streaming else pending.append

        def open_encoder(spoken: Synthesis) -> Encoder | Finished:
            if spoken.output is not None:
                return Finished(spoken.output, joining=self._joining(fmt.name, spoken, streaming))
            rate = output_rate(fmt.name, spoken.sample_rate, self.config.audio.opus_rate_hz)
            return Encoder(fmt, rate, streaming, self.encoding)

        try:
            with self._working():
                wanted = (fmt.name, streaming)
                encoder = await self._encode_loop(job, Report(), wanted, open_encoder, emit)
                assert isinstance(encoder, Encoder | Finished)
                emit(await asyncio.to_thread(encoder.finish))
            if not streaming:
                chunks.put_nowait(encoder.header() + b"".join(pending))
            chunks.put_nowait(None)
        except (WorkerError, SpeechError, OSError, ValueError) as exc:
            chunks.put_nowait(exc)

    def _joined(self, output: OutputParams) -> OutputParams | None:
        """What each segment of a job of several is asked for when its format joins (`joins`):
        its own stream, as streamed (no header to go back to), or its bare packets; at the
        rate of the engine's outputs as its workers last said (0: not known yet)."""
        joins = FORMATS[output["format"]].joins
        if not joins:
            return None
        rate = Shape.of(output).out_rate(self.chain.rate) if self.chain.rate else 0
        if joins == "bytes":
            return {**output, "streaming": True, "rate": rate}
        return {**output, "packets": True, "rate": rate}

    def _joining(self, fmt: str, first: Synthesis, streaming: bool) -> Encoder | None:
        """The stream a joined job's segments' packets are put into, if they come so."""
        assert first.output is not None
        if not first.output.packets:
            return None
        return Encoder(FORMATS[fmt], first.output.rate, streaming, self.encoding)

    @contextlib.contextmanager
    def _working(self) -> Iterator[None]:
        """Count a job in and out; the last one out hands the burst's freed heap back."""
        self._at_work += 1
        try:
            yield
        finally:
            self._at_work -= 1
            if not self._at_work:
                asyncio.get_running_loop().run_in_executor(None, process_memory.give_back_heap)

    # -- the one encode loop -----------------------------------------------------------------

    async def _encode_loop(
        self,
        job: SpeechJob,
        report: Report,
        wanted: tuple[str, bool],
        open_sink: Callable[[Synthesis], Sink],
        emit: Callable[[bytes], object],
    ) -> Sink:
        """Speak the job's segments; encode each in a thread while the next is spoken, `emit`
        its bytes when encoded (segments finished by their workers, as `wanted`: format and
        streaming, are emitted as they are). Returns the sink, not yet finished."""
        sink: Sink | None = None
        encoding: asyncio.Future[tuple[bytes, float]] | None = None
        loop, stretch = asyncio.get_running_loop(), self.chain.speeds(job.speed)[1]
        done = functools.partial(_emit_encoded, report, emit)
        turn = contextlib.AsyncExitStack()
        try:
            output = finishing(*wanted, stretch, self.config.audio, self.shaping)
            spoken = contextlib.aclosing(self.syntheses(job, report, output))
            async for synthesis in await turn.enter_async_context(spoken):
                if sink is None:
                    sink = await self._turns.open(open_sink, synthesis, turn)
                    emit(sink.start())
                elif synthesis.output is not None:  # a joined job's next segment
                    assert isinstance(sink, Finished)
                    emit(await asyncio.to_thread(sink.join, synthesis.output))
                if synthesis.output is not None:  # finished by its worker
                    continue
                after_gap = await encoded(encoding)
                # A bare executor future, not a task: nothing cancels it (stopping cancels
                # every task), so it is done only when its thread is done with the sink.
                args = (sink, synthesis, after_gap, stretch)
                encoding = loop.run_in_executor(None, self._encode, *args)
                encoding.add_done_callback(done)
            if sink is None:
                raise SpeechError("the engine made no sound for this text")
            await encoded(encoding)
        except BaseException:
            if encoding is not None and not encoding.done():  # its thread still feeds the sink
                await asyncio.wait({encoding}, timeout=ENCODE_DRAIN_S)
            if sink is not None:
                sink.abort()
            raise
        finally:
            await turn.aclose()
        return sink

    def _encode(
        self, sink: Sink, spoken: Synthesis, gap: bool, stretch: float
    ) -> tuple[bytes, float]:
        """Feed one segment to the sink (in a thread), after the gap before it (fed on its
        own: no copy of the segment to join them); its bytes and the milliseconds spent."""
        started = time.perf_counter()
        data = sink.feed(audio.gap(sink.rate, self.shaping, stretch)) if gap else b""
        piece = audio.piece(spoken.samples, spoken.sample_rate, sink.rate, self.shaping, stretch)
        data += sink.feed(piece)
        return data, (time.perf_counter() - started) * 1000

    # -- synthesis ---------------------------------------------------------------------------

    async def feel(self, job: SpeechJob) -> EmotionResult:
        """The job's emotion, resolved ahead of its turn (SpeechError: nothing to speak)."""
        pieces = self.segments(job.text, job.lead_clause)
        return await self.emotions.resolve(job.style, pieces, job.vector)

    async def syntheses(
        self, job: SpeechJob, report: Report, output: OutputParams | None = None
    ) -> AsyncGenerator[Synthesis, None]:
        """The job's segments as the workers speak them, in order: a job of one segment asks
        for its finished `output`, and so does each segment of a job whose format joins
        (`Format.joins`), all at one rate. Segments are asked ahead, as many at a time as the
        engine has workers, so a long text is spoken, and encoded, on every core. A job that
        leads with a clause (the speech API: its bytes are the first a client hears) or is
        joined before the engine's rate is known (it is then the first segment's) asks one,
        then one more at a time for each segment spoken: two spoken beside the first one's
        encode slowed its first bytes by 7-21 ms in `scripts/bench --only formats`."""
        started = time.perf_counter()
        pieces = self.segments(job.text, job.lead_clause)
        emotion = job.emotion or await self.emotions.resolve(job.style, pieces, job.vector)
        report.emotion, report.segments = emotion, len(pieces)
        report.timings.update(
            emotion_ms=(time.perf_counter() - started) * 1000, synth_ms=0.0, worker_ms=0.0
        )
        voice, speed = job.voice or self.chain.default_voice, self.chain.speeds(job.speed)[0]
        if output is not None and len(pieces) > 1:
            output = self._joined(output)
        todo = enumerate(zip(pieces, emotion.vectors, strict=True))
        asked: deque[asyncio.Future[Synthesis]] = deque()
        workers, spoke = len(self.chain.workers), 0
        unknown = output is not None and not output.get("rate")  # a joined job's rate
        ahead = 1 if job.lead_clause or unknown else workers
        try:
            while True:
                while len(asked) < ahead and (segment := next(todo, None)) is not None:
                    n, (piece, vector) = segment
                    prosody = to_prosody(vector)
                    prosody = replace(prosody, rate=prosody.rate * speed)
                    wanted = output if output is None or not n else {**output, "follows": True}
                    request = SynthRequest(
                        job.job_id, piece, voice, prosody, vector, job.timeout_cap_s, job.seed,
                        wanted,
                    )  # fmt: skip
                    asked.append(asyncio.ensure_future(self._spoken(request, report.engines)))
                    asked[-1].add_done_callback(_seen)
                if not asked:
                    return
                synthesis = await asked.popleft()
                report.add(synthesis)
                if not synthesis.spoke:  # a segment the engine made no sound for is left out
                    continue
                if output is not None and synthesis.output is not None:
                    output = {**output, "rate": synthesis.output.rate}
                spoke += 1
                ahead = max(ahead, min(workers, spoke))
                yield synthesis
        finally:
            for left in asked:  # the job ended early: nobody wants these any more
                left.cancel()

    async def _spoken(self, request: SynthRequest, used: list[str]) -> Synthesis:
        """One segment spoken (SpeechError: its text was refused); when it was asked finished
        and its worker could not finish it (no PyAV there), it is finished here alike."""
        try:
            synthesis = await self.chain.synthesize(request, used)
        except RequestRefused as exc:
            raise SpeechError(str(exc)) from None
        if request.output is None or synthesis.output is not None or not synthesis.spoke:
            return synthesis
        return await self._turns.finish(synthesis, request.output)


def _emit_encoded(
    report: Report, emit: Callable[[bytes], object], task: asyncio.Future[tuple[bytes, float]]
) -> None:
    """When a segment's encode is done: its bytes out, its time counted."""
    if not task.cancelled() and task.exception() is None:
        data, ms = task.result()
        report.timings["encode_ms"] += ms
        emit(data)


def _seen(asked: asyncio.Future[Synthesis]) -> None:
    """Take a segment's failure as read: a job that ended before it does not want it."""
    if not asked.cancelled():
        asked.exception()
