"""`msgvoice doctor`: what is wrong and how to fix it, as checks with one-line fix hints.

Every probe is bounded; the engine probe runs a real one-word synthesis in a worker that is
stopped before doctor returns. Status: error if any check errs, else warning if any warns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import soundfile as sf

from msgvoice.config import Config
from msgvoice.net import base_url, bearer
from msgvoice.ops import service
from msgvoice.speech.encoder import caf_encoder
from msgvoice.speech.formats import FILE_FORMATS
from msgvoice.speech.supervisor import Supervisor, SynthRequest, WorkerError
from msgvoice.worker.protocol import ENGINES

ENGINE_PROBE_TIMEOUT_S = 60.0
HTTP_PROBE_TIMEOUT_S = 3.0
RANK = {"pass": 0, "warning": 1, "error": 2}


@dataclass(frozen=True)
class Check:
    """One finding."""

    name: str
    status: str  # pass | warning | error
    message: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        """The check as doctor JSON shows it."""
        out = {"name": self.name, "status": self.status, "message": self.message}
        return out | ({"fix": self.fix} if self.fix else {})


def overall(checks: list[Check]) -> str:
    """The worst status among the checks."""
    return max((c.status for c in checks), key=RANK.__getitem__, default="pass")


def check_state_dir(config: Config) -> Check:
    """The state dir exists (or can be made) and takes a file."""
    path = config.state_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            "state_dir",
            "error",
            f"{path} is not writable: {exc.strerror or exc}",
            "set MSGVOICE_STATE_DIR to a writable folder, or fix its permissions",
        )
    return Check("state_dir", "pass", f"{path} is writable")


def check_encoders(config: Config) -> Check:
    """libsndfile can write every format msgvoice offers; the configured one above all."""
    available = sf.available_formats()
    missing = [
        name
        for name, fmt in FILE_FORMATS.items()
        if fmt.container not in available or fmt.codec not in sf.available_subtypes(fmt.container)
    ]
    if config.tts.format in missing:
        return Check(
            "encoders",
            "error",
            f"libsndfile cannot write {config.tts.format}",
            "pip install -U soundfile (its wheels bundle libsndfile with Opus and MP3)",
        )
    if missing:
        return Check(
            "encoders",
            "warning",
            f"libsndfile cannot write {', '.join(missing)}",
            "pip install -U soundfile",
        )
    if config.imessage.enabled and config.imessage.voice_format == "caf" and caf_encoder() is None:
        return Check(
            "encoders",
            "warning",
            "no ffmpeg with libopus: iMessage voice notes go "
            "out as MP3 attachments, not voice bubbles",
            "install ffmpeg (brew install ffmpeg) and restart msgvoice",
        )
    ffmpeg = shutil.which("ffmpeg")
    extra = f"; ffmpeg at {ffmpeg}" if ffmpeg else "; no ffmpeg (only needed for CAF voice notes)"
    return Check(
        "encoders", "pass", f"{sf.__libsndfile_version__}: wav, flac, ogg/opus, mp3{extra}"
    )


async def check_engine(config: Config, engine_options: dict[str, Any]) -> Check:
    """Start a worker and speak one word, bounded; the worker is stopped afterwards."""
    worker = config.worker
    try:
        async with (
            asyncio.timeout(ENGINE_PROBE_TIMEOUT_S),
            Supervisor(worker, config.tts.engine, engine_options, config.paths.tmp) as sup,
        ):
            result = await sup.synthesize(SynthRequest("doctor", "你好"))
            ignored = sup.engine_facts.get("ignored") or []
    except TimeoutError:
        return Check(
            "engine",
            "error",
            f"{config.tts.engine}: no audio within {ENGINE_PROBE_TIMEOUT_S:.0f}s",
            "run `msgvoice say 你好 -v` to see the worker's log",
        )
    except (WorkerError, OSError) as exc:
        return Check(
            "engine",
            "error",
            f"{config.tts.engine}: {exc}",
            "check tts.engine and worker.python; `msgvoice say 你好 -v` shows the log",
        )
    seconds = result.samples.size / result.sample_rate
    spoke = (
        f"{config.tts.engine}: spoke 你好 ({seconds:.2f}s at {result.sample_rate} Hz) "
        f"in {result.wall_s * 1000:.0f} ms"
    )
    if ignored:
        return Check(
            "engine",
            "warning",
            f"{spoke}; the installed engine cannot take: {'; '.join(map(str, ignored))}",
            "unset those keys, or install an IndexTTS2 that supports them",
        )
    return Check("engine", "pass", spoke)


async def check_engines(config: Config) -> Check:
    """Which engines the worker's interpreter could load (found, not imported: cheap)."""
    python = config.worker.python or sys.executable
    probes = {name: spec.probe for name, spec in ENGINES.items()}
    probe = "\n".join(
        [
            "import importlib.util, json",
            "def found(name):",
            "    try:",
            "        return importlib.util.find_spec(name) is not None",
            "    except ImportError:  # a dotted name whose parent package is missing",
            "        return False",
            f"print(json.dumps({{n: found(m) for n, m in {probes!r}.items()}}))",
        ]
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            python, "-c", probe, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError as exc:
        return Check(
            "engines",
            "error",
            f"worker.python {python} cannot run: {exc}",
            "point worker.python at an existing interpreter",
        )
    try:
        async with asyncio.timeout(HTTP_PROBE_TIMEOUT_S * 5):
            out, _ = await proc.communicate()
        found = json.loads(out)
    except (TimeoutError, ValueError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return Check("engines", "warning", f"{python} did not answer which engines it has")
    parts = [
        f"{name}: {'installed' if ok else f'not installed (pip install {ENGINES[name].install})'}"
        for name, ok in found.items()
    ]
    return Check("engines", "pass", f"under {python}: " + "; ".join(parts))


async def check_llm(config: Config, client: httpx.AsyncClient) -> Check:
    """The emotion LLM answers /v1/models and lists the configured model."""
    emotion = config.emotion
    if not emotion.llm_base_url:
        return Check("llm", "pass", "no LLM configured: styles use the built-in lexicon")
    url = base_url(emotion.llm_base_url) + "/v1/models"
    headers = bearer(emotion.llm_api_key)
    try:
        response = await client.get(url, headers=headers, timeout=HTTP_PROBE_TIMEOUT_S)
        response.raise_for_status()
        models = [m.get("id") for m in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return Check(
            "llm",
            "warning",
            f"{url} unreachable ({exc}); styles fall back to the lexicon",
            "start LM Studio's server or fix emotion.llm_base_url / LMSTUDIO_BASE_URL",
        )
    if emotion.llm_model and emotion.llm_model not in models:
        return Check(
            "llm",
            "warning",
            f"model {emotion.llm_model!r} not listed at {url}",
            f"load it in LM Studio, or set LMSTUDIO_EMO_MODEL to one of {models[:5]}",
        )
    return Check("llm", "pass", f"{url} answers; model {emotion.llm_model or '(default)'}")


async def daemon_facts(config: Config, client: httpx.AsyncClient) -> dict[str, Any] | None:
    """A running daemon's /healthz (with its live worker facts), or None."""
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::", "") else config.http.host
    headers = bearer(config.http.token)
    try:
        response = await client.get(
            f"http://{host}:{config.http.port}/healthz",
            headers=headers,
            timeout=HTTP_PROBE_TIMEOUT_S,
        )
        facts: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return facts


def check_daemon(facts: dict[str, Any] | None, installed: bool) -> Check:
    """Whether a daemon answers, and how its worker is."""
    if facts is None:
        if installed:
            return Check(
                "daemon",
                "warning",
                "the service is installed but no daemon answers",
                "msgvoice service status; see its log in the state dir",
            )
        return Check("daemon", "pass", "no daemon running (start one with `msgvoice run`)")
    worker = facts.get("worker", {})
    if worker.get("state") == "failed":
        return Check(
            "daemon",
            "error",
            f"the worker failed: {worker.get('last_error')}",
            "fix the engine (see `msgvoice doctor` engine check), then restart",
        )
    return Check(
        "daemon",
        "pass",
        f"daemon answers; worker {worker.get('state')} "
        f"pid {worker.get('pid')}, {worker.get('jobs_done', 0)} jobs",
    )


def check_service(config: Config) -> Check:
    """Whether the service file is installed and loaded (optional)."""
    kind = service.default_kind()
    target = service.path(config, kind)
    if not target.exists():
        return Check(
            "service", "pass", f"not installed (optional: msgvoice service install --{kind})"
        )
    if service.loaded(config, kind) is False:
        return Check(
            "service",
            "warning",
            f"{target} is installed but not loaded",
            f"msgvoice service install --{kind} (reloads it)",
        )
    return Check("service", "pass", f"{target} installed")


async def report(
    config: Config,
    engine_options: dict[str, Any],
    live_worker: Callable[[], dict[str, Any]] | None = None,
    probe: Callable[[], Awaitable[Check]] | None = None,
) -> dict[str, Any]:
    """The doctor JSON. In a daemon, `live_worker` gives the worker facts and the engine is
    not probed again."""
    checks = [
        Check(
            "config",
            "pass",
            "valid"
            + (
                f"; set from {', '.join(sorted(set(config.sources.values())))}"
                if config.sources
                else "; all defaults"
            ),
        )
    ]
    checks += [check_state_dir(config), check_encoders(config)]
    async with httpx.AsyncClient() as client:
        if live_worker is None:
            checks.append(await (probe() if probe else check_engine(config, engine_options)))
            checks.append(await check_engines(config))
            facts = await daemon_facts(config, client)
            installed = service.path(config, service.default_kind()).exists()
            checks.append(check_daemon(facts, installed))
            worker = (facts or {}).get("worker") or {"state": "not running"}
        else:
            worker = live_worker()
            checks.append(check_daemon({"worker": worker}, True))
        checks.append(await check_llm(config, client))
    checks.append(check_service(config))
    return {
        "status": overall(checks),
        "checks": [c.as_json() for c in checks],
        "config": config.effective(),
        "config_sources": dict(config.sources),
        "worker": worker,
    }


def config_error(message: str) -> dict[str, Any]:
    """The doctor JSON for a config that does not load."""
    check = Check("config", "error", message, "fix the value named, or unset that env variable")
    return {
        "status": "error",
        "checks": [check.as_json()],
        "config": {},
        "config_sources": {},
        "worker": {"state": "not running"},
    }
