"""doctor's check of the emotion LLM: which server it is, whether it has the model, and how
long a real analysis takes against the bound replies really have.

The model is warmed first (a one-token request within `llm_first_call_timeout_s`), so the
analysis is timed as a reply meets a warm server: within `llm_timeout_s`, or it did not make
it. Fixes are for the kind of server found (see msgvoice/llm.py).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from msgvoice.config import Config, EmotionConfig
from msgvoice.llm import Refused, ServerDown, identify
from msgvoice.net import base_url, bearer
from msgvoice.ops.probes import HTTP_PROBE_TIMEOUT_S, Check
from msgvoice.speech.emotion_llm import Analyser

MODEL_FIXES = {
    "LM Studio": "download it in LM Studio (`lms get`), or set LMSTUDIO_EMO_MODEL to one of {}",
    "Ollama": "`ollama pull {model}`, or set LMSTUDIO_EMO_MODEL to one of {}",
    "vLLM": "vLLM serves the model it was started with: set LMSTUDIO_EMO_MODEL to one of {}",
    "other": "set LMSTUDIO_EMO_MODEL to one of {}",
}
START_FIXES = {
    "LM Studio": "start LM Studio's server (`lms server start`)",
    "Ollama": "start Ollama (`ollama serve`)",
    "llama.cpp": "start llama-server with the model (`llama-server -m MODEL.gguf`)",
    "llama-cpp-python": "start `python -m llama_cpp.server --model MODEL.gguf`",
}
KEY_FIX = "the server wants another API key: set emotion.llm_api_key (LMSTUDIO_API_KEY)"
REFUSAL_FIXES = {
    "auth": KEY_FIX,
    "unloaded": "load the model in LM Studio (or set emotion.llm_autoload)",
    "model": "check emotion.llm_model ({model!r}) against the server's",
    "request": "the server refused the request: check emotion.llm_model and its log",
}
"""A refused analysis's fix, by what was refused (llm.Refused.about)."""


async def check_llm(
    config: Config, client: httpx.AsyncClient, live: dict[str, Any] | None = None
) -> Check:
    """The emotion LLM as replies meet it; `live` is a running daemon's view of it."""
    emotion = config.emotion
    if not emotion.llm_base_url:
        return Check("llm", "pass", "no LLM configured: styles use the built-in lexicon")
    base = base_url(emotion.llm_base_url)
    server = await identify(client, base, emotion.llm_api_key)
    where = base if server.kind == "other" else f"{server.kind} at {base}"
    if server.error is not None:
        return _no_list(base, server.error)
    model = emotion.llm_model
    if model and model not in server.models and not server.single_model:
        fix = MODEL_FIXES.get(server.kind, MODEL_FIXES["other"])
        return Check(
            "llm",
            "warning",
            f"model {model!r} not listed by {where}",
            fix.format(server.models[:5], model=model),
        )
    state = await _lm_studio_state(client, base, emotion) if server.kind == "LM Studio" else ""
    served = f"{model or '(default)'} on {where}{state}"
    if server.single_model:
        served += " (its one model answers whatever model is named)"
    found = await _analyse(emotion, client, served)
    if isinstance(found, Check):
        return found
    took_ms, form = found
    message = (
        f"{served}: analysis in {took_ms:.0f} ms, within llm_timeout_s "
        f"({emotion.llm_timeout_s:g} s); {form}"
    )
    return Check("llm", "pass", message + _live(live))


async def _analyse(
    emotion: EmotionConfig, client: httpx.AsyncClient, where: str
) -> tuple[float, str] | Check:
    """(ms, structured-output form) of one warm analysis, or the check saying why not."""
    analyser = Analyser(emotion, client)
    try:
        try:
            await analyser.health.ping_once()
        except (TimeoutError, ServerDown) as exc:
            what = "no answer" if isinstance(exc, TimeoutError) else str(exc)
            return Check(
                "llm",
                "warning",
                f"{where} gave {what} to a one-token request within llm_first_call_timeout_s "
                f"({emotion.llm_first_call_timeout_s:g} s); styles fall back to the lexicon",
                "the server is stuck or still loading its model: look at its log, or restart it",
            )
        started = time.monotonic()
        found = await analyser.analyse("开心", ["你好"])
        took_ms = (time.monotonic() - started) * 1000
    finally:
        await analyser.close()
    if found is None:
        message, fix = _why_not(analyser, where)
        return Check("llm", "warning", message, fix)
    return took_ms, analyser.facts()["structured_output"].replace("text", "free-form answers")


def _why_not(analyser: Analyser, where: str) -> tuple[str, str]:
    """What went wrong with the timed analysis, and the fix for it."""
    failure, emotion = analyser.last_failure, analyser.config
    if isinstance(failure, TimeoutError):
        return (
            f"{where} did not finish an analysis within llm_timeout_s ({emotion.llm_timeout_s:g}"
            " s), so replies use the lexicon",
            "use a smaller or faster model, or raise emotion.llm_timeout_s",
        )
    message = f"{where} gave no emotion vectors ({analyser.last_error}); styles use the lexicon"
    if isinstance(failure, Refused):
        fix = REFUSAL_FIXES.get(failure.about, REFUSAL_FIXES["request"])
        return message, fix.format(model=emotion.llm_model)
    if isinstance(failure, ServerDown):
        return message, "the server failed: see its log"
    return (
        message,
        "the model's answer had no usable vectors: try a model that follows instructions",
    )


def _no_list(base: str, error: Exception) -> Check:
    """/v1/models did not answer: the key, or nothing there."""
    if isinstance(error, Refused) and error.about == "auth":
        return Check("llm", "warning", f"{base}/v1/models: {error}", KEY_FIX)
    fixes = "; ".join(START_FIXES.values())
    return Check(
        "llm",
        "warning",
        f"{base}/v1/models unreachable ({error}); styles fall back to the lexicon",
        f"start the server or fix emotion.llm_base_url / LMSTUDIO_BASE_URL ({fixes})",
    )


def _live(live: dict[str, Any] | None) -> str:
    """What the running daemon sees, when it sees it otherwise."""
    if not live or live.get("state") in ("ready", "cold", None):
        return ""
    down = f" for {live['down_s']:.0f} s" if live.get("down_s") is not None else ""
    return f"; the running daemon has it {live['state']}{down} ({live.get('last_error')})"


async def _lm_studio_state(client: httpx.AsyncClient, base: str, emotion: EmotionConfig) -> str:
    """ ", loaded" / ", not loaded (...)" from LM Studio's REST model list."""
    try:
        response = await client.get(
            base + "/api/v0/models",
            headers=bearer(emotion.llm_api_key),
            timeout=HTTP_PROBE_TIMEOUT_S,
        )
        listed = {m.get("id"): m.get("state") for m in response.json().get("data", [])}
    except (httpx.HTTPError, ValueError, AttributeError):
        return ""
    state = listed.get(emotion.llm_model)
    if state == "not-loaded":
        return ", not loaded (LM Studio loads it at the first request, or at msgvoice's start)"
    return ", loaded" if state == "loaded" else ""
