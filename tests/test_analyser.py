"""The real LLM emotion analyser against a scripted OpenAI-compatible server on loopback.

Every case ends with audio from the real worker and a recorded source; none raises.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from msgvoice import compose
from msgvoice.config import EmotionConfig, load
from msgvoice.net import base_url
from msgvoice.speech.emotion import dominant
from msgvoice.speech.emotion_llm import Analyser, parse_vectors
from msgvoice.speech.speaker import SpeechJob
from tests.conftest import read_audio, rms
from tests.fake_llm import FakeLLM, Reply, vectors_json

ANGRY = [0, 0.6, 0, 0, 0, 0, 0, 0]
SAD = [0, 0, 0.6, 0, 0, 0, 0, 0]
TEXT = "你怎么又迟到了。我们都等你半天了。"  # two segments


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def speak_with_llm(url: str, tmp_path: Path, timeout_s: float = 2.0) -> tuple[dict, float]:
    """Speak TEXT with style 开心 through the whole pipeline; return (say JSON, seconds)."""
    config = load(
        None,
        {
            "LMSTUDIO_BASE_URL": url,
            "LMSTUDIO_EMO_MODEL": "emo-model",
            "MSGVOICE_EMOTION_LLM_TIMEOUT_S": str(timeout_s),
            "MSGVOICE_STATE_DIR": str(tmp_path / "state"),
        },
    )
    out = tmp_path / "out.wav"
    started = time.monotonic()
    async with compose.speech_kit(config) as built:
        result = await built.speaker.speak(SpeechJob("t", TEXT, out, "wav", style="开心"))
    elapsed = time.monotonic() - started
    samples, _ = read_audio(out)
    assert rms(samples) > 0.01 and result.duration_s > 1.0
    return result.as_json(), elapsed


@pytest.mark.parametrize(
    ("script", "source", "first_dominant"),
    [
        ([Reply(vectors_json(ANGRY, SAD))], "llm", "angry"),
        (
            [Reply("Sure! Here you go:\n```json\n" + vectors_json(ANGRY, SAD) + "\n```\nBye")],
            "llm",
            "angry",
        ),
        ([Reply('{"vector": ["0", "0.6", "0", "0", "0", "0", "0", "0"]}')], "llm", "angry"),
        ([Reply(vectors_json(ANGRY))], "llm", "angry"),  # too few: padded
        ([Reply(vectors_json(ANGRY, SAD, SAD, SAD))], "llm", "angry"),  # too many: cut
        (
            [Reply('{"vectors": [[NaN, 0.6, -3, 0, 0, 0, 0, 0], [0, 0.6, 0, 0, 0, 0, 0, 0]]}')],
            "llm",
            "angry",
        ),
        ([Reply(vectors_json([0.1, 0.2, 0.3]))], "lexicon", "happy"),  # wrong length
        ([Reply("I cannot help with that.")], "lexicon", "happy"),
        ([Reply(status=500, body="oops"), Reply(vectors_json(ANGRY, SAD))], "llm", "angry"),
        (
            [
                Reply(status=400, body='{"error": "No models loaded"}'),
                Reply(vectors_json(ANGRY, SAD)),
            ],
            "llm",
            "angry",
        ),
        ([Reply(status=401, body='{"error": "bad key"}')], "lexicon", "happy"),
        ([Reply(status=500), Reply(status=500)], "lexicon", "happy"),
    ],
    ids=[
        "good",
        "fenced-prose",
        "vector-key-strings",
        "too-few",
        "too-many",
        "nan-negative",
        "wrong-length",
        "no-json",
        "500-then-ok",
        "not-loaded-then-ok",
        "401",
        "500-twice",
    ],
)
async def test_llm_answers_end_in_audio_with_a_source(
    tmp_path: Path, script: list[Reply], source: str, first_dominant: str
) -> None:
    """Whatever the LLM answers, the job speaks and says which source it used."""
    async with FakeLLM(list(script)) as llm:
        report, _ = await speak_with_llm(llm.url + "/v1", tmp_path)
    assert report["emotion"]["source"] == source
    first = tuple(report["emotion"]["vectors"][0])
    assert dominant(first)[0] == first_dominant  # type: ignore[arg-type]  # a parsed vector is a Vector
    assert all(0 <= x <= 0.7 for v in report["emotion"]["vectors"] for x in v)
    assert all(sum(v) <= 0.8 + 1e-6 for v in report["emotion"]["vectors"])


async def test_one_call_per_job_carries_style_and_every_segment(tmp_path: Path) -> None:
    """The analyser sends one request with the style and all segments, to the right model."""
    async with FakeLLM([Reply(vectors_json(ANGRY, SAD))]) as llm:
        await speak_with_llm(llm.url, tmp_path)  # base given without /v1 works too
    assert len(llm.requests) == 1
    sent = json.dumps(llm.requests[0], ensure_ascii=False)
    assert llm.requests[0]["model"] == "emo-model"
    assert "开心" in sent and "你怎么又迟到了。" in sent and "我们都等你半天了。" in sent


async def test_connection_refused_falls_back_quickly(tmp_path: Path) -> None:
    """No server at the address: the lexicon is used and the job is not held up."""
    report, elapsed = await speak_with_llm(f"http://127.0.0.1:{free_port()}", tmp_path)
    assert report["emotion"]["source"] == "lexicon"
    assert elapsed < 2.0 + 5.0


async def test_server_that_never_answers_is_bounded_by_the_timeout(tmp_path: Path) -> None:
    """A hung LLM costs at most the timeout; the job still completes with the lexicon."""
    async with FakeLLM([Reply(hang=True)] * 3) as llm:
        report, elapsed = await speak_with_llm(llm.url, tmp_path, timeout_s=1.0)
    assert report["emotion"]["source"] == "lexicon"
    assert elapsed < 1.0 + 5.0


async def test_results_are_cached_by_model_style_and_segments() -> None:
    """The same style and segments ask the LLM once; a new style asks again."""
    async with FakeLLM() as llm, httpx.AsyncClient() as client:
        analyser = Analyser(EmotionConfig(llm_base_url=llm.url, llm_model="m"), client)
        for _ in range(3):
            assert await analyser.analyse("开心", ["你好。"]) is not None
        await analyser.analyse("难过", ["你好。"])
    assert len(llm.requests) == 2 and analyser.calls["cached"] == 2


def test_base_url_forms() -> None:
    """A base with or without /v1 and a trailing slash names the same server."""
    assert base_url("http://h:1234/v1/") == base_url("http://h:1234") == "http://h:1234"


def test_parse_rejects_answers_without_vectors() -> None:
    """Prose with no vector in it is an error for the caller to fall back on."""
    with pytest.raises(ValueError, match="no emotion vectors"):
        parse_vectors("happy!", 1)
