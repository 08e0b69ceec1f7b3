"""The real LLM emotion analyser against a scripted OpenAI-compatible server on loopback.

Every case ends with audio from the real worker and a recorded source; none raises.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from msgvoice import compose
from msgvoice.config import EmotionConfig, load
from msgvoice.net import base_url, tls
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


async def speak_with_llm(
    url: str, tmp_path: Path, timeout_s: float = 2.0, first_call_s: float | None = None
) -> tuple[dict, float]:
    """Speak TEXT with style 开心 through the whole pipeline; return (say JSON, seconds)."""
    config = load(
        None,
        {
            "LMSTUDIO_BASE_URL": url,
            "LMSTUDIO_EMO_MODEL": "emo-model",
            "MSGVOICE_EMOTION_LLM_TIMEOUT_S": str(timeout_s),
            "MSGVOICE_EMOTION_LLM_FIRST_CALL_TIMEOUT_S": str(first_call_s or timeout_s),
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
        (  # outside the schema's own range: not an answer, the lexicon speaks
            [Reply('{"vectors": [[NaN, 0.6, -3, 0, 0, 0, 0, 0], [0, 0.6, 0, 0, 0, 0, 0, 0]]}')],
            "lexicon",
            "happy",
        ),
        (
            [Reply('{"vectors": [[Infinity, 0, 0, 0, 0, 0, 0, 0], [0, 0.6, 0, 0, 0, 0, 0, 0]]}')],
            "lexicon",
            "happy",
        ),
        ([Reply(vectors_json([0.1, 0.2, 0.3]))], "lexicon", "happy"),  # wrong length
        ([Reply("I cannot help with that.")], "lexicon", "happy"),
        ([Reply(status=500, body="oops"), Reply(vectors_json(ANGRY, SAD))], "llm", "angry"),
        (  # LM Studio with JIT off and nothing loaded: the lexicon, at once
            [
                Reply(status=404, body='{"error": {"message": "No models loaded. Please ..."}}'),
                Reply(vectors_json(ANGRY, SAD)),
            ],
            "lexicon",
            "happy",
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
        "infinity",
        "wrong-length",
        "no-json",
        "500-then-ok",
        "not-loaded-no-jit",
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
    async with FakeLLM() as llm, httpx.AsyncClient(verify=tls()) as client:
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


# -- LM Studio as it behaves -------------------------------------------------------------------


def lm_config(url: str, **extra: str) -> EmotionConfig:
    env = {"LMSTUDIO_BASE_URL": url, "LMSTUDIO_EMO_MODEL": "emo-model", **extra}
    return load(None, env).emotion


async def test_a_cold_model_gets_the_first_call_allowance_then_is_fast() -> None:
    """JIT loading takes 3 s, three times llm_timeout_s: the first call (cold) waits within the
    first-call allowance and keeps the LLM's emotion; the next one is fast and bounded by
    llm_timeout_s. Every request carries LM Studio's `ttl` and a JSON schema."""
    bounds = {
        "MSGVOICE_EMOTION_LLM_TIMEOUT_S": "1",
        "MSGVOICE_EMOTION_LLM_FIRST_CALL_TIMEOUT_S": "8",
    }
    async with FakeLLM([Reply(vectors_json(ANGRY, SAD))] * 2, loaded=False, load_s=3) as llm:
        config = lm_config(llm.url, **bounds)
        async with httpx.AsyncClient(verify=tls()) as client:
            analyser = Analyser(config, client)
            assert analyser.health.bound_s() == 8
            started = time.monotonic()
            first = await analyser.analyse("生气", ["一", "二"])
            cold = time.monotonic() - started
            assert analyser.health.bound_s() == 1
            started = time.monotonic()
            second = await analyser.analyse("难过", ["一", "二"])
            warm = time.monotonic() - started
    assert first is not None and dominant(first[0])[0] == "angry" and 3 <= cold < 8
    assert second is not None and warm < 1
    assert all(r["ttl"] == 86_400 for r in llm.requests)
    assert all(r["response_format"]["type"] == "json_schema" for r in llm.requests)
    schema = llm.requests[0]["response_format"]["json_schema"]["schema"]["properties"]["vectors"]
    assert schema["minItems"] == schema["maxItems"] == 2


async def test_the_daemon_warms_the_model_at_start(clean_env: Path) -> None:
    """At start the daemon sends a one-token request (with the ttl) in the background, so
    LM Studio loads the model before the first styled reply."""
    from tests.daemon_util import running  # noqa: PLC0415

    async with FakeLLM(loaded=False, load_s=2) as llm:
        env = {"LMSTUDIO_BASE_URL": llm.url, "LMSTUDIO_EMO_MODEL": "emo-model"}
        async with running(clean_env, **env) as (daemon, _):
            analyser = daemon.kit.analyser
            assert analyser is not None
            deadline = time.monotonic() + 10
            while not analyser.health.warm:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    assert llm.requests[0]["max_tokens"] == 1 and llm.requests[0]["ttl"] == 86_400


async def test_a_server_without_structured_output_is_asked_without_it_from_then_on() -> None:
    """A 400 for `response_format` is retried at once in the next form (json_object, then
    none), and the endpoint is remembered: the next call does not pay for the refused
    attempts, and a free-form answer gets a small budget."""
    llm = FakeLLM([Reply(vectors_json(ANGRY, SAD))] * 2, schema=False)
    async with llm, httpx.AsyncClient(verify=tls()) as client:
        analyser = Analyser(lm_config(llm.url), client)
        first = await analyser.analyse("生气", ["一", "二"])
        second = await analyser.analyse("难过", ["三", "四"])
    assert first is not None and second is not None
    assert llm.formats() == ["json_schema", "json_object", None, None]
    assert llm.requests[-1]["max_tokens"] < llm.requests[0]["max_tokens"]


async def test_a_reasoning_model_cut_off_is_asked_again_with_more_tokens() -> None:
    """A thinking model spends max_tokens before its JSON (`finish_reason: "length"`): one
    more request with a larger budget, in the same bound; <think> blocks are removed."""
    llm = FakeLLM([Reply(vectors_json(ANGRY, SAD))], think=True, needs_tokens=500)
    async with llm, httpx.AsyncClient(verify=tls()) as client:
        found = await Analyser(lm_config(llm.url), client).analyse("生气", ["一", "二"])
    assert found is not None and dominant(found[0])[0] == "angry"
    budgets = [r["max_tokens"] for r in llm.requests]
    assert len(budgets) == 2 and budgets[1] >= 500 > budgets[0]


async def test_no_model_loaded_with_jit_off(caplog: pytest.LogCaptureFixture) -> None:
    """LM Studio without JIT and nothing loaded: without llm_autoload the lexicon answers and
    the log says once what to do; with it the model is loaded through the REST API and the
    LLM's emotion is kept."""
    llm = FakeLLM([Reply(vectors_json(ANGRY, SAD))], jit=False, loaded=False)
    async with llm, httpx.AsyncClient(verify=tls()) as client:
        analyser = Analyser(lm_config(llm.url), client)
        assert await analyser.analyse("生气", ["一"]) is None
        assert await analyser.analyse("生气", ["二"]) is None
        loading = Analyser(lm_config(llm.url, MSGVOICE_EMOTION_LLM_AUTOLOAD="true"), client)
        found = await loading.analyse("生气", ["一", "二"])
    assert caplog.text.count("set emotion.llm_autoload") == 1
    assert llm.loads == ["emo-model"] and found is not None and dominant(found[0])[0] == "angry"
