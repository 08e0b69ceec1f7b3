"""The emotion LLM and the responder against the servers people run (llama-server,
llama-cpp-python, LM Studio, Ollama: tests/fake_llm.py follows each one's source or docs), and
against servers that are cold, hung or refusing: a server that does not answer costs at most
one reply its wait, and comes back by itself when it answers again."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from msgvoice.config import load
from msgvoice.net import tls
from msgvoice.ops.llm_check import check_llm
from msgvoice.speech import emotion_llm
from msgvoice.speech.emotion_llm import Analyser
from tests.conftest import until
from tests.daemon_util import outbox, running, wait_job
from tests.fake_llm import FakeLLM, Reply, vectors_json

ANGRY = [0, 0.6, 0, 0, 0, 0, 0, 0]
SAD = [0, 0, 0.6, 0, 0, 0, 0, 0]


def llm_env(llm: FakeLLM, timeout_s: float = 2.0, first_s: float = 4.0, **extra: str) -> dict:
    return {
        "LMSTUDIO_BASE_URL": llm.url + "/v1",
        "LMSTUDIO_EMO_MODEL": "emo-model",
        "MSGVOICE_EMOTION_LLM_TIMEOUT_S": str(timeout_s),
        "MSGVOICE_EMOTION_LLM_FIRST_CALL_TIMEOUT_S": str(first_s),
        **extra,
    }


def analyser_for(llm: FakeLLM, client: httpx.AsyncClient, **bounds: float) -> Analyser:
    env = {k: v for k, v in llm_env(llm, **bounds).items()}  # type: ignore[arg-type]
    return Analyser(load(None, env).emotion, client)


async def tts(client: httpx.AsyncClient, chat: str, text: str) -> dict[str, Any]:
    """Send `/tts` and wait for its job."""
    sent = (await client.post("/v1/messages", json={"chat_id": chat, "text": text})).json()
    return await wait_job(client, sent["jobs"][0])


async def ready(analyser: Analyser | None, within: float = 15) -> None:
    assert analyser is not None
    await until(lambda: analyser.health.state == "ready", within=within)


# -- structured output as each server speaks it -------------------------------------------------


async def test_llama_cpp_python_500_is_a_refusal_and_json_object_schema_is_used(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """llama-cpp-python answers `json_schema` with a 500 naming `response_format`: msgvoice
    asks again with `json_object` + `schema` at once, a `/tts` gets the LLM's emotion, the
    next job asks in that form straight away, and one log line says which form is in use."""
    caplog.set_level(logging.INFO, "msgvoice")
    script = [Reply(vectors_json(ANGRY)), Reply(vectors_json(SAD))]
    async with (
        FakeLLM(script, kind="llama-cpp-python") as llm,
        running(clean_env, **llm_env(llm)) as (daemon, client),
    ):
        await ready(daemon.kit.analyser)
        first = await tts(client, "c", "/tts 生气：你怎么又迟到了")
        second = await tts(client, "c", "/tts 难过：我们都等你半天了")
    assert first["emotion"]["source"] == second["emotion"]["source"] == "llm"
    assert first["emotion"]["vector"][1] > 0.3 and second["emotion"]["vector"][2] > 0.3
    chats = [f for f, r in zip(llm.formats(), llm.requests, strict=True) if r["max_tokens"] > 1]
    assert chats == ["json_schema", "json_object", "json_object"]
    sent = [r for r in llm.requests if r.get("response_format", {}).get("type") == "json_object"]
    assert sent[0]["response_format"]["schema"]["required"] == ["vectors"]
    assert caplog.text.count("structured output as json_object + schema") == 1


@pytest.mark.parametrize("kind", ["llama-server", "ollama", "lmstudio"])
async def test_servers_that_take_json_schema_are_asked_once(kind: str) -> None:
    """llama-server, Ollama and LM Studio honour `json_schema`: one request per analysis."""
    async with (
        FakeLLM([Reply(vectors_json(ANGRY))], kind=kind) as llm,
        httpx.AsyncClient(verify=tls()) as c,
    ):
        found = await analyser_for(llm, c).analyse("生气", ["你好"])
    assert found is not None and llm.formats() == ["json_schema"]


async def test_a_lesser_form_is_tried_again_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """The form that works is remembered, but not forever: after REPROBE_S the better form is
    asked for again (a server upgraded or swapped), and refused again, cheaply."""
    async with FakeLLM(kind="llama-cpp-python") as llm, httpx.AsyncClient(verify=tls()) as client:
        analyser = analyser_for(llm, client)
        await analyser.analyse(None, ["一"])
        await analyser.analyse(None, ["二"])
        monkeypatch.setattr(emotion_llm, "REPROBE_S", 0.0)
        await analyser.analyse(None, ["三"])
    again = ["json_schema", "json_object"]
    assert llm.formats() == ["json_schema", "json_object", "json_object", *again]


async def test_an_ollama_model_not_pulled_is_said_once_and_costs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ollama's 404 "model 'x' not found" is a refusal of the model: the lexicon at once,
    one warning, and the server is not taken for down."""
    async with (
        FakeLLM(kind="ollama", models=["qwen3:0.6b"]) as llm,
        httpx.AsyncClient(verify=tls()) as c,
    ):
        analyser = analyser_for(llm, c)
        for text in ("一", "二", "三", "四"):
            assert await analyser.analyse("开心", [text]) is None
    assert analyser.health.state == "ready" and len(llm.requests) == 4
    assert caplog.text.count("model 'emo-model' not found") == 1


# -- cold, hung, back ---------------------------------------------------------------------------


async def test_a_frozen_server_at_cold_start_makes_no_reply_wait(clean_env: Path) -> None:
    """A server that accepts connections and never answers (a model still loading looks like
    this) while the daemon starts: the warm-up waits in the background, three `/tts` in a
    row each use the lexicon at once instead of waiting the cold allowance, and /healthz
    says the LLM is warming, then down."""
    llm = FakeLLM()
    llm.frozen = True
    async with llm, running(clean_env, **llm_env(llm, timeout_s=2, first_s=3)) as (daemon, client):
        jobs = [await tts(client, f"c{n}", f"/tts 生气：第{n}条") for n in range(3)]
        warming = (await client.get("/healthz")).json()["emotion_llm"]
        await until(lambda: daemon.kit.analyser and daemon.kit.analyser.health.state == "down")
        down = (await client.get("/healthz")).json()["emotion_llm"]
        metrics = (await client.get("/metrics")).text
    assert [j["emotion"]["source"] for j in jobs] == ["lexicon"] * 3
    assert all(j["timings"]["emotion_ms"] < 2000 for j in jobs)  # none waited the bound
    assert warming["state"] in ("warming", "down") and warming["calls"]["skipped"] == 3
    assert down["state"] == "down" and down["down_s"] is not None
    assert 'msgvoice_emotion_llm_state{state="down"} 1.0' in metrics
    assert all(r["max_tokens"] == 1 for r in llm.requests)  # warm-up and probes; no reply's


async def test_without_a_warm_up_only_one_reply_pays_the_cold_allowance() -> None:
    """Cold and no warm-up under way (`msgvoice say`, or after the ttl): the first reply
    waits the cold allowance and fails; the server is then down, and the next replies do not
    ask it at all."""
    llm = FakeLLM()
    llm.frozen = True
    async with llm, httpx.AsyncClient(verify=tls()) as client:
        analyser = analyser_for(llm, client, timeout_s=0.5, first_s=1.0)
        started = time.monotonic()
        assert await analyser.analyse("生气", ["一"]) is None
        assert time.monotonic() - started >= 1.0
        for text in ("二", "三"):
            assert await analyser.analyse("生气", [text]) is None
        asked = [r for r in llm.requests if r["max_tokens"] > 1]
        await analyser.close()
    assert len(asked) == 1 and analyser.calls["skipped"] == 2


async def test_a_hung_warm_server_stops_costing_replies_and_recovers() -> None:
    """A warm server hangs: three replies each wait the ordinary bound, then replies stop
    asking (the lexicon at once) while a background probe backs off; when the server answers
    again the LLM is used again, without a restart."""
    async with FakeLLM() as llm, httpx.AsyncClient(verify=tls()) as client:
        analyser = analyser_for(llm, client, timeout_s=0.3, first_s=0.6)
        assert await analyser.analyse("生气", ["暖"]) is not None
        llm.frozen = True
        for n in range(3):
            assert await analyser.analyse("生气", [f"等{n}"]) is None
        assert analyser.health.state == "down"
        before = sum(r["max_tokens"] > 1 for r in llm.requests)
        assert await analyser.analyse("生气", ["不等"]) is None
        assert sum(r["max_tokens"] > 1 for r in llm.requests) == before  # not asked
        llm.frozen = False
        await ready(analyser)
        found = await analyser.analyse("生气", ["回来了"])
        await analyser.close()
    assert found is not None
    assert analyser.calls["skipped"] == 1 and analyser.calls["error"] == 3


async def test_llama_server_loading_is_down_then_back(clean_env: Path) -> None:
    """llama-server answers 503 "Loading model" while it loads: the warm-up marks it down,
    replies use the lexicon meanwhile, and once it has loaded a `/tts` gets the LLM's
    emotion."""
    async with (
        FakeLLM([Reply(vectors_json(ANGRY))], kind="llama-server", loaded=False) as llm,
        running(clean_env, **llm_env(llm)) as (daemon, client),
    ):
        during = await tts(client, "c", "/tts 生气：还在加载")
        llm.loaded = True
        await ready(daemon.kit.analyser)
        after = await tts(client, "c", "/tts 生气：加载好了")
    assert during["emotion"]["source"] == "lexicon" and after["emotion"]["source"] == "llm"


async def test_four_chats_with_a_slow_server_do_not_queue_behind_analysis(
    clean_env: Path,
) -> None:
    """Four chats at once and a server that takes 1.5 s per answer: every job's analysis is
    under way before the first job is spoken, so no synthesis turn waits on another job's
    HTTP call."""
    script = [Reply(vectors_json(ANGRY), delay_s=1.5) for _ in range(4)]
    async with (
        FakeLLM(script) as llm,
        running(clean_env, **llm_env(llm, timeout_s=5)) as (daemon, client),
    ):
        await ready(daemon.kit.analyser)
        finished: list[float] = []
        daemon.lane.listeners.append(lambda _job, _state: finished.append(time.monotonic()))
        asked = len(llm.requests)
        sent = await asyncio.gather(
            *(
                client.post("/v1/messages", json={"chat_id": f"c{n}", "text": f"/tts 生气：第{n}"})
                for n in range(4)
            )
        )
        await until(lambda: len(llm.requests) == asked + 4, within=10)
        all_asked = time.monotonic()
        jobs = [await wait_job(client, s.json()["jobs"][0]) for s in sent]
    assert [j["emotion"]["source"] for j in jobs] == ["llm"] * 4
    assert all_asked < min(finished)


# -- doctor ----------------------------------------------------------------------------------------


async def doctor_llm(llm: FakeLLM, **env: str) -> Any:
    config = load(None, llm_env(llm, timeout_s=1.0, first_s=3.0) | env)
    async with httpx.AsyncClient(verify=tls()) as client:
        return await check_llm(config, client)


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        ("llama-server", "llama.cpp"),
        ("llama-cpp-python", "llama-cpp-python"),
        ("ollama", "Ollama"),
        ("lmstudio", "LM Studio"),
    ],
)
async def test_doctor_names_the_server_kind(kind: str, named: str) -> None:
    """doctor tells the server by what its endpoints answer, and times a warm analysis
    against llm_timeout_s."""
    models = ["emo-model"] if kind in ("ollama", "lmstudio") else ["tiny.gguf"]
    async with FakeLLM(kind=kind, models=models) as llm:
        check = await doctor_llm(llm)
    assert check.status == "pass", check
    assert f"{named} at " in check.message and "within llm_timeout_s (1 s)" in check.message


async def test_doctor_a_single_model_server_is_not_model_not_listed() -> None:
    """llama-server serves its one model whatever `model` names: no "not listed" warning."""
    async with FakeLLM(kind="llama-server", models=["tiny.gguf"]) as llm:
        check = await doctor_llm(llm)
    assert check.status == "pass" and "not listed" not in check.message
    assert "answers whatever model is named" in check.message


async def test_doctor_model_fixes_are_for_the_kind() -> None:
    """A model Ollama has not pulled: the fix is `ollama pull`."""
    async with FakeLLM(kind="ollama", models=["qwen3:0.6b"]) as llm:
        check = await doctor_llm(llm)
    assert check.status == "warning" and "ollama pull emo-model" in check.fix


async def test_doctor_slow_analysis_is_judged_against_the_reply_bound() -> None:
    """An analysis that takes 1.5 s with replies bound to 1 s is not a pass, whatever the
    cold allowance; the message says what timed out, the fix what to change."""
    async with FakeLLM([Reply(vectors_json(ANGRY), delay_s=1.5)]) as llm:
        check = await doctor_llm(llm)
    assert check.status == "warning"
    assert "within llm_timeout_s (1 s)" in check.message and "llm_timeout_s" in check.fix


async def test_doctor_a_401_is_about_the_api_key() -> None:
    """A server that wants a key it was not given: the fix names emotion.llm_api_key."""
    async with FakeLLM(kind="llama-server", api_key="sekrit") as llm:
        check = await doctor_llm(llm)
    assert check.status == "warning" and "llm_api_key" in check.fix and "401" in check.message


async def test_doctor_a_frozen_server_names_what_timed_out() -> None:
    """A server that never answers: the one-token request within the cold allowance."""
    llm = FakeLLM()
    llm.frozen = True
    async with llm:
        config = load(None, llm_env(llm, timeout_s=0.5, first_s=1.0))
        async with httpx.AsyncClient(timeout=0.5, verify=tls()) as client:
            check = await check_llm(config, client)
    assert check.status == "warning"
    assert "unreachable" in check.message or "llm_first_call_timeout_s" in check.message


# -- the responder --------------------------------------------------------------------------------


def responder_env(llm: FakeLLM) -> dict[str, str]:
    return {
        "MSGVOICE_RESPONDER_BASE_URL": llm.url,
        "MSGVOICE_RESPONDER_MODEL": "chat",
        "MSGVOICE_RESPONDER_MAX_TOKENS": "120",
    }


async def test_the_responder_keeps_the_conversation_across_a_restart(clean_env: Path) -> None:
    """Each answer sees the chat's conversation so far, journalled: a restart keeps it, a
    reasoning model's <think> block never reaches the chat, and max_tokens is sent."""
    script = [Reply("<think>hmm</think>我叫小声。"), Reply("你刚才问我叫什么。")]
    async with FakeLLM(script, kind="llama-server") as llm:
        async with running(clean_env, **responder_env(llm)) as (_, client):
            await client.post("/v1/messages", json={"chat_id": "c", "text": "你叫什么？"})
            await until(lambda: outbox(client, "c"))
        async with running(clean_env, **responder_env(llm)) as (_, client):
            await client.post("/v1/messages", json={"chat_id": "c", "text": "我刚才问了什么？"})
            await until(lambda: _texts(client, "c", 2))
            texts = [i["text"] for i in await outbox(client, "c")]
    assert texts == ["我叫小声。", "你刚才问我叫什么。"]
    second = llm.requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == "我叫小声。" and second[3]["content"] == "我刚才问了什么？"
    assert all(r["max_tokens"] == 120 for r in llm.requests)


async def _texts(client: httpx.AsyncClient, chat: str, count: int) -> bool:
    return len(await outbox(client, chat)) >= count


async def test_the_responder_says_a_refused_key_once(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 from the responder's server: no reply, one warning naming responder.api_key."""
    caplog.set_level(logging.INFO, "msgvoice")
    async with (
        FakeLLM(kind="llama-cpp-python", api_key="k") as llm,
        running(clean_env, **responder_env(llm)) as (daemon, client),
    ):
        for text in ("在吗？", "还在吗？"):
            await client.post("/v1/messages", json={"chat_id": "c", "text": text})
        conversations = daemon.router.conversations
        assert conversations is not None
        await until(lambda: len(llm.requests) == 2 and not conversations.waiting())
        items = await outbox(client, "c")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "api_key" in r.message]
    assert items == [] and len(warned) == 1
    assert caplog.text.count("Invalid API key") == 2  # the second said quietly
