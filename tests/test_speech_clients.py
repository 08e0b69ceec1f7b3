"""The speech API as real clients call it, replayed with their own request shapes:

- Open WebUI (`backend/open_webui/routers/audio.py`): its frontend posts `{"input", "voice"}`,
  the backend sets `model` and merges the admin's extra params, posts with aiohttp and saves
  the body as `.mp3`; voices come from `GET {base}/audio/voices` as `{"voices": [{"id",
  "name"}]}`, models from `GET {base}/audio/models` as `{"models": [{"id"}]}`.
- Home Assistant core (`openai_conversation/tts.py`): the openai SDK's
  `audio.speech.with_streaming_response.create(model, voice, input, instructions,
  response_format="mp3")`, with the prompt as `instructions` on every call.
- The openai SDK itself (openai-python 3.57 `speech_create_params.py`): voices by name or as
  `{"id": ...}`, `stream_format` "sse" (events `speech.audio.delta` with base64 `audio`, then
  `speech.audio.done`) or "audio".
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from msgvoice.speech.convert import decode
from tests.daemon_util import Speech, running, shared_daemon
from tests.test_speech_api import client_for


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Speech]:
    """One daemon for the tests here that only ask it for speech (no settings of their own)."""
    async with shared_daemon(tmp_path_factory.mktemp("speech")) as parts:
        yield parts


TEXT = "今天天气很好。我们下午一起去公园散步吧！"


def mp3_seconds(data: bytes, tmp: Path) -> float:
    path = tmp / "x.mp3"
    path.write_bytes(data)
    samples, rate = decode(path)
    return samples.size / rate


@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_open_webui_request_gets_an_mp3(speech: Speech, tmp_path: Path) -> None:
    """Open WebUI's body (input, voice, its model, no response_format) through aiohttp gives
    an MP3 it can save and play; its voice and model lists parse the way it reads them."""
    daemon, _ = speech
    base = f"http://127.0.0.1:{daemon.http.port}/v1"
    payload = {"input": TEXT, "voice": "alloy", "model": "tts-1"}
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-unused"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/audio/speech", json=payload, headers=headers) as r:
            r.raise_for_status()
            kind, body = r.headers["Content-Type"], await r.read()
        async with session.get(f"{base}/audio/voices") as r:
            voices = {v["id"]: v["name"] for v in (await r.json())["voices"]}
        async with session.get(f"{base}/audio/models") as r:
            models = [m["id"] for m in (await r.json())["models"]]
    assert kind == "audio/mpeg" and mp3_seconds(body, tmp_path) > 1.0
    assert voices["cmn"] == "cmn" and "msgvoice" in models


@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_home_assistant_instructions_become_the_style(speech: Speech) -> None:
    """Home Assistant's call (streaming response, `instructions`, mp3) works; the instructions
    act as the style (same audio as `style`), and "None" or "" count as no style."""
    daemon, _ = speech
    client = client_for(daemon.http.port)

    def home_assistant(instructions: str, **extra: Any) -> bytes:
        with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts",
            voice="marin",
            input=TEXT,
            instructions=instructions,
            response_format="pcm",
            extra_body=extra,
        ) as response:
            return b"".join(response.iter_bytes())

    sad = await asyncio.to_thread(home_assistant, "难过")
    styled = await asyncio.to_thread(home_assistant, "", style="难过")
    none = await asyncio.to_thread(home_assistant, "None")
    empty = await asyncio.to_thread(home_assistant, "")
    mp3 = await asyncio.to_thread(
        lambda: (
            client.audio.speech.create(
                model="tts-1", voice="nova", input=TEXT, instructions="speak cheerfully"
            ).content
        )
    )
    assert sad == styled and none == empty and sad != none
    assert len(sad) > len(none)  # sad is slower
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF


@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_sse_events_carry_the_same_audio(speech: Speech) -> None:
    """`stream_format: "sse"`: `speech.audio.delta` events whose base64 audio joins to the
    same PCM as the plain response, then one `speech.audio.done`."""
    daemon, _ = speech
    client = client_for(daemon.http.port)

    def sse() -> tuple[str, list[dict[str, Any]]]:
        with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts",
            voice="alloy",
            input=TEXT,
            response_format="pcm",
            stream_format="sse",
        ) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            return response.headers["content-type"], [json.loads(x[6:]) for x in lines]

    def plain() -> bytes:
        return client.audio.speech.create(
            model="tts-1",
            voice="alloy",
            input=TEXT,
            response_format="pcm",
            stream_format="audio",
        ).content

    kind, events = await asyncio.to_thread(sse)
    whole = await asyncio.to_thread(plain)
    assert kind.startswith("text/event-stream")
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and len(events) >= 3
    usage = events[-1]["usage"]  # OpenAI's SpeechAudioDoneEvent: all three counts required
    assert usage["input_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"]
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == whole


@pytest.mark.parametrize(
    "voice", ["default", "marin", "cedar", {"id": "alloy"}, "cmn", "en+f3", "en-us", "EN-US+f2"]
)
@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_every_openai_voice_form_is_accepted(speech: Speech, voice: Any) -> None:
    """OpenAI's names (old and new), `default`, `{"id": ...}` and the engine's own names, in
    any case (eSpeak's `en-US` as the example config spells it, `en-us`), all speak."""
    _, client = speech
    body = {"model": "tts-1", "input": "你好", "voice": voice, "response_format": "wav"}
    answer = await client.post("/v1/audio/speech", json=body)
    assert answer.status_code == 200 and answer.content[:4] == b"RIFF"


@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_unknown_voice_is_the_clients_mistake(speech: Speech) -> None:
    """A voice the engine lacks is a 400 naming `voice` and pointing at the voice list; the
    worker is neither restarted nor replaced."""
    daemon, client = speech
    before = [w.facts() for w in daemon.kit.workers]
    answer = await client.post(
        "/v1/audio/speech", json={"model": "tts-1", "input": "你好", "voice": "nosuchvoice"}
    )
    after = [w.facts() for w in daemon.kit.workers]
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == "voice"
    assert "/v1/audio/voices" in error["message"]
    assert [w["pid"] for w in after] == [w["pid"] for w in before]
    assert all(sum(w["restarts"].values()) == 0 for w in after)


@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_aac_is_adts(speech: Speech, tmp_path: Path) -> None:
    """`response_format: aac` is ADTS AAC (`audio/aac`) that decodes to the speech."""
    _, client = speech
    body = {"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "aac"}
    answer = await client.post("/v1/audio/speech", json=body)
    path = tmp_path / "x.aac"
    path.write_bytes(answer.content)
    samples, rate = decode(path)
    assert answer.headers["Content-Type"] == "audio/aac" and samples.size / rate > 1.0


@pytest.mark.asyncio(loop_scope="module")  # the module's daemon
async def test_streamable_formats_stream_by_default(speech: Speech) -> None:
    """Every format comes chunked (no Content-Length) unless `stream: false`, as OpenAI
    streams mp3."""
    _, client = speech
    kinds = {}
    for fmt in ("opus", "aac", "wav", "pcm", "mp3", "flac"):
        body = {"model": "tts-1", "input": "你好。", "voice": "alloy", "response_format": fmt}
        answer = await client.post("/v1/audio/speech", json=body)
        kinds[fmt] = "content-length" in answer.headers
    whole = await client.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "input": "你好。", "response_format": "pcm", "stream": False},
    )
    assert kinds == {
        "opus": False,
        "aac": False,
        "wav": False,
        "pcm": False,
        "mp3": False,
        "flac": False,
    }
    assert "content-length" in whole.headers


FUZZ_VALUES: list[Any] = [
    None, True, 0, -1, 2**70, -(2**70), 1e308, math.inf, -math.inf, math.nan, 0.5, "",
    " ", "x" * 5000, "\ud800", "None", [], [1, 2], [math.nan] * 8, {}, {"id": 3},
    {"id": "alloy"}, "alloy", "sse", "audio", "mp3", "wma", 4.5, "1e400",
]  # fmt: skip
FUZZ_FIELDS = [
    "input", "model", "voice", "instructions", "response_format", "speed", "stream_format",
    "stream", "style", "emotion", "seed", "unknown_field",
]  # fmt: skip


async def test_fuzzed_bodies_never_cause_a_5xx_or_a_restart(clean_env: Path) -> None:
    """Wrong types, NaN and infinities, huge numbers, objects where strings go, lone
    surrogates and unknown fields: every answer is 2xx or 4xx, and no worker restarts."""
    rng = random.Random(2026)
    async with running(clean_env, MSGVOICE_TEXT_MAX_CHARS="2000") as (daemon, client):
        statuses = []
        for _ in range(150):
            body: dict[str, Any] = {"model": "tts-1", "input": "你好", "voice": "alloy"}
            for field in rng.sample(FUZZ_FIELDS, rng.randint(1, 3)):
                body[field] = rng.choice(FUZZ_VALUES)
            raw = json.dumps(body, allow_nan=True)
            answer = await client.post(
                "/v1/audio/speech", content=raw, headers={"Content-Type": "application/json"}
            )
            statuses.append(answer.status_code)
            assert answer.status_code < 500, (body, answer.text)
        for raw in ('{"input": "\\ud800"}', "[1, 2", '{"input": 1e999}', "\xff\xfe"):
            answer = await client.post(
                "/v1/audio/speech", content=raw.encode("utf-8", "surrogatepass")
            )
            assert 400 <= answer.status_code < 500, raw
        restarts = [sum(w.restarts.values()) for w in daemon.kit.workers]
    assert 200 in statuses and 400 in statuses
    assert restarts == [0] * len(restarts)
    assert not np.isnan(0.0)


async def test_an_alias_to_a_voice_in_any_case_speaks_that_voice(clean_env: Path) -> None:
    """`tts.voice_aliases = ["alloy=en-us"]`, as the example config writes it: `alloy` speaks
    eSpeak's en-US (a different sound from the configured cmn), not an error."""
    async with running(clean_env, MSGVOICE_TTS_VOICE_ALIASES="alloy=en-us") as (_, client):
        body = {"model": "tts-1", "input": "hello there", "response_format": "wav"}
        alloy = await client.post("/v1/audio/speech", json={**body, "voice": "alloy"})
        english = await client.post("/v1/audio/speech", json={**body, "voice": "en-US"})
        default = await client.post("/v1/audio/speech", json={**body, "voice": "default"})
    assert alloy.status_code == 200 and alloy.content == english.content
    assert alloy.content != default.content
