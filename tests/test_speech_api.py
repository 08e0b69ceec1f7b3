"""The OpenAI-compatible speech endpoint, driven by the official `openai` client over loopback."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest
import pytest_asyncio
import soundfile as sf

from msgvoice.net import tls
from msgvoice.sound import audio
from tests.conftest import pitch_hz, until
from tests.daemon_util import Speech, running, shared_daemon


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Speech]:
    """One daemon for the tests here that only ask it for speech (no settings of their own)."""
    async with shared_daemon(tmp_path_factory.mktemp("speech")) as parts:
        yield parts


TEXT = "今天天气很好。我们下午一起去公园散步吧！Then we can have tea."
DECODE = {"mp3": "MP3", "opus": "OGG", "wav": "WAV", "flac": "FLAC"}


def decode(fmt: str, data: bytes) -> tuple[np.ndarray, int]:
    """Samples of a response body, whatever its format."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32767.0, 24_000
    if fmt == "wav":  # read the PCM itself: a streamed WAV's sizes are unknown (0xFFFFFFFF)
        if data[4:8] != b"\xff\xff\xff\xff":
            assert sf.info(io.BytesIO(data)).format == "WAV"
        rate = int.from_bytes(data[24:28], "little")
        return np.frombuffer(data[44:], "<i2").astype(np.float32) / 32767.0, rate
    if fmt == "flac" and sf.info(io.BytesIO(data)).frames >= 2**62:
        # A streamed FLAC's STREAMINFO says "length unknown" (as `flac -` writes from a pipe):
        # FFmpeg reads it frame by frame; libsndfile's whole-file read cannot size its array.
        with av.open(io.BytesIO(data)) as container:
            frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
            return np.concatenate(frames).astype(np.float32), container.streams.audio[0].rate
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert sf.info(io.BytesIO(data)).format == DECODE[fmt]
    return samples, rate


def client_for(port: int) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60
    )


def create(client: openai.OpenAI, fmt: str, stream: bool, **extra: Any) -> bytes:
    body = {"stream": stream, **extra}
    if stream:
        with client.audio.speech.with_streaming_response.create(
            model="msgvoice",
            voice="alloy",
            input=TEXT,
            response_format=fmt,  # type: ignore[arg-type]  # a Literal at run time
            extra_body=body,
        ) as response:
            return b"".join(response.iter_bytes())
    return client.audio.speech.create(
        model="msgvoice", voice="alloy", input=TEXT, response_format=fmt, extra_body=body
    ).content  # type: ignore[arg-type]  # see above


@pytest.mark.parametrize("fmt", ["mp3", "opus", "wav", "flac", "pcm"])
@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_every_format_streaming_and_not_decodes_with_the_right_duration(
    speech: Speech, fmt: str
) -> None:
    """The official client gets decodable audio in every format, streamed or whole, of the
    same plausible length."""
    daemon, _ = speech
    client = client_for(daemon.http.port)
    whole = await asyncio.to_thread(create, client, fmt, False)
    streamed = await asyncio.to_thread(create, client, fmt, True)
    a, rate = decode(fmt, whole)
    b, rate_b = decode(fmt, streamed)
    assert rate == rate_b
    assert 3.0 < len(a) / rate < 15.0
    assert abs(len(a) - len(b)) / rate < 0.08  # codec padding at most
    assert float(np.sqrt(np.mean(a**2))) > 0.03


def ffmpeg_samples(data: bytes) -> np.ndarray:
    """The samples FFmpeg decodes from a body (what most players and clients use)."""
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    return np.concatenate(frames).astype(np.float32)


@pytest.mark.parametrize("fmt", ["mp3", "flac"])
@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_streamed_mp3_and_flac_hold_the_whole_files_samples(speech: Speech, fmt: str) -> None:
    """A streamed mp3 or flac of several sentences decodes to the non-streamed file's samples:
    FLAC's whole file is one stream whose STREAMINFO is complete; MP3's is each segment
    encoded by the worker that spoke it, joined, as the stream is."""
    daemon, _ = speech
    client = client_for(daemon.http.port)
    whole = ffmpeg_samples(await asyncio.to_thread(create, client, fmt, False, seed=3))
    streamed = ffmpeg_samples(await asyncio.to_thread(create, client, fmt, True, seed=3))
    assert whole.size > 22_050 * 3 and float(np.sqrt(np.mean(whole**2))) > 0.03
    assert np.array_equal(whole, streamed)


def pauses(samples: np.ndarray, rate: int) -> list[int]:
    """The lengths of the quiet stretches (under -50 dBFS, 60 ms or more) between sounds."""
    quiet = np.abs(samples) < 10 ** (-50 / 20)
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    runs = [b - a for a, b in zip(edges[::2] + 1, edges[1::2] + 1, strict=False)]
    if quiet[0]:  # starts quiet: the first edge ends a leading stretch, not a pause
        runs = [b - a for a, b in zip(edges[1::2] + 1, edges[2::2] + 1, strict=False)]
    return [n for n in runs if n >= rate * 0.06]


@pytest.mark.parametrize("fmt", ["mp3", "aac", "opus"])
@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_a_joined_format_plays_as_one_stream_would(speech: Speech, fmt: str) -> None:
    """An mp3, aac or opus of several segments is encoded a segment at a time by the workers
    that speak them, side by side, and joined (Opus: its packets put into one Ogg stream).
    It plays as the wav of the same text does: as long, but for the first encoder's priming
    (Ogg tells the decoder to skip it) and up to a codec frame of padding per join; each
    pause between sentences as long, give or take a frame; no join sharper than the speech."""
    from msgvoice.sound.encoder import priming  # noqa: PLC0415
    from msgvoice.speech.formats import API_FORMATS  # noqa: PLC0415

    daemon, _ = speech
    client = client_for(daemon.http.port)
    wav, rate = decode("wav", await asyncio.to_thread(create, client, "wav", False, seed=5))
    joined = ffmpeg_samples(await asyncio.to_thread(create, client, fmt, False, seed=5))
    frame = {"mp3": 576, "aac": 1024}.get(fmt, rate // 50)
    if fmt == "opus":  # decoded at 48 kHz, the first encoder's priming skipped
        joined, lead = audio.resample(joined, 48_000, rate), 0
    else:
        lead = priming(API_FORMATS[fmt], rate)
    heard, want = pauses(joined, rate), pauses(wav, rate)
    assert len(heard) == len(want) >= 2
    assert all(-frame <= a - b <= 2 * frame for a, b in zip(heard, want, strict=True))
    assert 0 <= joined.size - lead - wav.size <= len(want) * frame + frame
    assert 0 < audio.click_ratio(joined, rate) <= 1.0


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_streamed_samples_equal_the_offline_ones(speech: Speech, fmt: str) -> None:
    """For a deterministic engine the streamed audio equals the non-streamed audio (MAE 0, so
    well under 1e-3), and the joins are no sharper than the speech within sentences."""
    daemon, _ = speech
    client = client_for(daemon.http.port)
    whole = await asyncio.to_thread(create, client, fmt, False, seed=7)
    streamed = await asyncio.to_thread(create, client, fmt, True, seed=7)
    again = await asyncio.to_thread(create, client, fmt, False, seed=7)
    a, _ = decode(fmt, whole)
    b, _ = decode(fmt, streamed)
    assert len(a) == len(b)
    assert float(np.mean(np.abs(a - b))) <= 1e-3
    assert np.array_equal(a, b)
    assert whole == again  # byte-identical on repeat
    assert 0 < audio.click_ratio(a, 24_000 if fmt == "pcm" else 22_050) <= 1.0


def holding(text: str, release: Path, **env: str) -> dict[str, str]:
    """A daemon's environment (with `env`) whose fault engine holds a segment with `text` in
    it until the file `release` exists."""
    engine = "tests.fault_engine:FaultEngine"
    hold = {"FAULT_HOLD_TEXT": text, "FAULT_HOLD_RELEASE": str(release)}
    return {"MSGVOICE_TTS_ENGINE": engine, **hold, **env}


async def test_first_audio_arrives_before_the_whole_text_is_spoken(clean_env: Path) -> None:
    """With stream: true the first sentence's bytes arrive while a later one is still being
    synthesised, in every format: the fault engine holds the second sentence until the test
    has the first bytes (and releases it then), so no timing is guessed."""
    release = clean_env.parent / "release"
    env = holding("第二句", release, MSGVOICE_TEXT_SEGMENT_CHARS="4")
    async with running(clean_env, **env) as (daemon, _):
        url = f"http://127.0.0.1:{daemon.http.port}/v1/audio/speech"
        async with httpx.AsyncClient(timeout=30, verify=tls()) as http:
            for fmt in ("pcm", "mp3", "flac", "opus", "aac", "wav"):
                body = {"model": "msgvoice", "input": "第一句。第二句。第三句。", "stream": True}
                async with http.stream("POST", url, json={**body, "response_format": fmt}) as got:
                    chunks = aiter(got.aiter_bytes())
                    async with asyncio.timeout(10):
                        first = await anext(chunks)
                    assert first, fmt  # and the second sentence is still held
                    release.touch()
                    rest = b"".join([chunk async for chunk in chunks])
                assert rest, fmt


async def test_a_long_text_is_spoken_ahead_on_both_workers_and_heard_in_order(
    clean_env: Path,
) -> None:
    """With two workers, a job's segments are asked ahead (a speech API request: once two
    have spoken): while the fault engine holds the third sentence on one worker, the other
    speaks the fourth. The mp3 (each segment encoded by the worker that spoke it) still plays
    the sentences in order, each as long as its text (the tone lasts 50 ms a character)."""
    release = clean_env.parent / "release"
    env = holding("二", release, MSGVOICE_TEXT_SEGMENT_CHARS="13", MSGVOICE_WORKER_COUNT="2")
    text = "一。" + "四" * 11 + "。" + "二" * 12 + "。" + "三" * 8 + "。"
    async with running(clean_env, **env) as (daemon, client):
        workers = daemon.kit.speaker.chain.workers
        body = {"model": "m", "input": text, "response_format": "mp3"}
        asked = asyncio.create_task(client.post("/v1/audio/speech", json=body))
        await until(lambda: sum(w.jobs_done for w in workers) == 3)  # the third is held
        assert sorted(w.jobs_done for w in workers) == [1, 2] and not asked.done()
        release.touch()
        answer = await asked
    assert answer.status_code == 200, answer.text
    heard = ffmpeg_samples(answer.content)
    tens = heard[: heard.size // 160 * 160].reshape(-1, 160)  # 10 ms at 16 kHz
    loud = np.concatenate([[0], np.sqrt(np.mean(tens**2, axis=1)) > 0.05, [0]])
    edges = np.flatnonzero(np.diff(loud.astype(np.int8)))
    sounds = [(b - a) / 100 for a, b in zip(edges[::2], edges[1::2], strict=True)]
    assert [round(s / 0.05) for s in sounds] == [2, 12, 13, 9]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "voice": "alloy"}, "input"),
        ({"model": "m", "input": "  "}, "input"),
        ({"model": "m", "input": "hi", "response_format": "wma"}, "response_format"),
        ({"model": "m", "input": "hi", "speed": 9}, "speed"),
        ({"model": "m", "input": "hi", "speed": "fast"}, "speed"),
        ({"model": "m", "input": "hi", "emotion": [1, 2]}, "emotion"),
        ({"model": "m", "input": "hi", "emotion": [0, 0, 0, 0, 0, 0, 0, -1]}, "emotion"),
        ({"model": "m", "input": "hi", "seed": "x"}, "seed"),
        ({"model": "m", "input": "hi", "stream": "yes"}, "stream"),
        ({"model": "m", "input": "hi", "voice": 3}, "voice"),
    ],
)
@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_bad_requests_get_openai_shaped_errors(
    speech: Speech, body: dict, param: str
) -> None:
    """Invalid bodies are 400 with {"error": {"message", "type", "param", "code"}}."""
    _, client = speech
    answer = await client.post("/v1/audio/speech", json=body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"]
    assert (await client.get("/healthz")).status_code == 200


@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_openai_client_raises_on_errors(speech: Speech) -> None:
    """The official client surfaces our errors as its BadRequestError."""
    daemon, _ = speech
    client = client_for(daemon.http.port)
    with pytest.raises(openai.BadRequestError, match="speed"):
        await asyncio.to_thread(
            client.audio.speech.create, model="msgvoice", voice="alloy", input="hi", speed=9.0
        )


@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_style_emotion_and_speed_change_the_audio(speech: Speech) -> None:
    """An angry emotion vector or speed 2 make shorter audio than neutral speed 1."""
    _, client = speech

    async def length(**extra: Any) -> int:
        body = {"model": "m", "input": TEXT, "response_format": "pcm", **extra}
        return len((await client.post("/v1/audio/speech", json=body)).content)

    plain = await length()
    fast = await length(speed=2.0)
    angry = await length(emotion=[0, 0.7, 0, 0, 0, 0, 0, 0])
    sad = await length(style="难过")
    assert fast < 0.7 * plain and angry < plain < sad


@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_speed_means_what_openai_means(speech: Speech) -> None:
    """`speed` 0.25 is four times as long as 1.0 and 4.0 a quarter (±5 %), past eSpeak's own
    80-450 wpm, with the voice's pitch kept (±5 %): the daemon stretches the time. (At 4.0
    half of a tonal contour is left out, so its median F0 is not the whole one's: the pitch
    of faster speech is checked on a flat contour, test_audio's stretch test.)"""
    text = "今天天气很好，我们一起去公园散步吧，路上还能买一杯热咖啡。"
    _, client = speech

    async def samples(speed: float) -> np.ndarray:
        body = {"model": "m", "input": text, "response_format": "pcm", "speed": speed}
        data = (await client.post("/v1/audio/speech", json=body)).content
        return np.frombuffer(data, "<i2").astype(np.float32) / 32767.0

    plain, slow, fast = await samples(1.0), await samples(0.25), await samples(4.0)
    assert slow.size / plain.size == pytest.approx(4.0, rel=0.05)
    assert fast.size / plain.size == pytest.approx(0.25, rel=0.05)
    assert pitch_hz(slow, 24_000) == pytest.approx(pitch_hz(plain, 24_000), rel=0.05)


@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_models_and_voices_are_listed(speech: Speech) -> None:
    """/v1/models lists msgvoice and the engine; /v1/audio/voices lists eSpeak's voices as
    {"id", "name"} objects (the shape Open WebUI and Kokoro-FastAPI read) with the languages
    each speaks, and /v1/audio/models as {"models": [{"id"}]}."""
    daemon, client = speech
    models = await asyncio.to_thread(client_for(daemon.http.port).models.list)
    voices = (await client.get("/v1/audio/voices")).json()
    audio_models = (await client.get("/v1/audio/models")).json()
    assert {m.id for m in models.data} >= {"msgvoice", "espeak"}
    listed = {v["id"]: v for v in voices["voices"]}
    assert listed["cmn"] == {"id": "cmn", "name": "cmn", "languages": ["cmn", "zh-cmn", "zh"]}
    assert listed["default"]["languages"] == ["cmn", "zh-cmn", "zh"]  # tts.voice is cmn
    assert "en-us" in listed["en-US"]["languages"]
    english = [v for v in listed if any(x.startswith("en") for x in listed[v]["languages"])]
    assert len(english) < len(listed) / 4  # a front end can offer voices per language
    assert "marin" in voices["aliases"]
    assert {"id": "msgvoice"} in audio_models["models"]


async def test_unseeded_engine_says_why(clean_env: Path) -> None:
    """An engine that takes no seed still speaks; the worker reports why it was not seeded."""
    from msgvoice.speech.speaker import Report, SpeechJob  # noqa: PLC0415

    env = {"MSGVOICE_TTS_ENGINE": "tests.fault_engine:FaultEngine"}
    async with running(clean_env, **env) as (daemon, _):
        report = Report()
        job = SpeechJob("s", "你好", Path(), "wav", seed=3)
        async for _synthesis in daemon.kit.speaker.syntheses(job, report):
            pass
    assert report.unseeded_why == "fault takes no seed"


def test_api_requests_speak_their_opening_clause_alone() -> None:
    """The opening clause is its own segment for API requests (sooner first audio); the rest
    keeps the normal budget. A clause under LEAD_MIN_CHARS goes with what follows, a number's
    comma or point is no clause end, and nothing speakable after it means no split."""
    from msgvoice.config import load  # noqa: PLC0415
    from msgvoice.speech.emotion import Emotions  # noqa: PLC0415
    from msgvoice.speech.speaker import Speaker  # noqa: PLC0415

    config = load(None, {})
    speaker = Speaker(config, None, Emotions(config.emotion))  # type: ignore[arg-type]  # unused
    morning = "清晨的阳光洒在窗台上，城市慢慢醒来。街角的早餐店已经排起了长队。"
    assert speaker.segments(morning) == [morning]
    assert speaker.segments(morning, lead_clause=True) == [
        "清晨的阳光洒在窗台上，",
        "城市慢慢醒来。街角的早餐店已经排起了长队。",
    ]
    assert speaker.segments("嗯，好的。我们走吧。", lead_clause=True) == [
        "嗯，好的。",
        "我们走吧。",
    ]
    english = "It costs 1,000.50 dollars, or so I hear."
    assert speaker.segments(english, lead_clause=True) == [
        "It costs 1,000.50 dollars,",
        "or so I hear.",
    ]
    for whole in ("只有一句。", "你好，😀", "嗯，好的。"):
        assert speaker.segments(whole, lead_clause=True) == [whole]


async def test_long_requests_take_turns_to_encode_and_all_finish(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six streamed flac requests of several segments at once, over two workers: never more
    than ENCODES_AT_ONCE of them have an encoder open in the daemon, and every one ends whole
    (decodes to the same length as the others)."""
    from msgvoice.speech import sinks, speaker  # noqa: PLC0415

    open_now, most = 0, 0
    real = speaker.Encoder

    class Counted(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            nonlocal open_now, most
            super().__init__(*args, **kwargs)
            open_now += 1
            most = max(most, open_now)

        def finish(self) -> bytes:
            nonlocal open_now
            open_now -= 1
            return bytes(super().finish())

    monkeypatch.setattr(speaker, "Encoder", Counted)
    env = {"MSGVOICE_TEXT_SEGMENT_CHARS": "8", "MSGVOICE_WORKER_COUNT": "2"}
    async with running(clean_env, **env) as (_, client):

        async def one() -> bytes:
            body = {"model": "msgvoice", "voice": "alloy", "input": TEXT, "stream": True}
            body["response_format"] = "flac"
            answer = await client.post("/v1/audio/speech", json=body)
            assert answer.status_code == 200, answer.text
            return answer.content

        bodies = await asyncio.gather(*(one() for _ in range(6)))
    lengths = {round(len(decode("flac", b)[0]) / 2400) for b in bodies}
    assert most == sinks.ENCODES_AT_ONCE and len(lengths) == 1 and min(lengths) > 0
