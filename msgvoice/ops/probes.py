"""doctor's probes that reach outside: a real synthesis, the worker's interpreter, the LLM and
a running daemon. Each is bounded and returns a finding, never raises."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass
from typing import Any

import httpx

from msgvoice.config import Config
from msgvoice.net import bearer
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


async def check_engine(config: Config, engine_options: dict[str, Any]) -> Check:
    """Start a worker and speak one word, bounded; the worker is stopped afterwards."""
    worker = config.worker
    try:
        async with (
            asyncio.timeout(ENGINE_PROBE_TIMEOUT_S),
            Supervisor(worker, config.tts.engine, engine_options) as sup,
        ):
            result = await sup.synthesize(SynthRequest("doctor", "你好"))
            ignored = sup.engine_facts.get("ignored") or []
            weights = sup.engine_facts.get("weights")
            g2p = sup.engine_facts.get("chinese_g2p")
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
        + (f"; weights: {weights}" if weights else "")
        + (f"; Chinese G2P: {g2p}" if g2p else "")
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
