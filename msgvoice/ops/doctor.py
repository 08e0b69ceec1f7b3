"""`msgvoice doctor`: what is wrong and how to fix it, as checks with one-line fix hints.

Every probe is bounded; the engine probe runs a real one-word synthesis in a worker that is
stopped before doctor returns. Status: error if any check errs, else warning if any warns.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import av
import httpx

from msgvoice.config import Config
from msgvoice.net import tls
from msgvoice.ops import service
from msgvoice.ops.apps import (
    check_discord,
    check_feishu,
    check_imessage,
    check_matrix,
    check_qq,
    check_telegram,
)
from msgvoice.ops.engines import check_installed
from msgvoice.ops.llm_check import check_llm
from msgvoice.ops.probes import (
    Check,
    check_engine,
    check_engines,
    daemon_facts,
    overall,
)
from msgvoice.speech.formats import FILE_FORMATS


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
    """PyAV's FFmpeg has every encoder and muxer msgvoice writes with; the configured one
    above all."""
    missing = [
        name
        for name, fmt in FILE_FORMATS.items()
        if fmt.codec not in av.codecs_available
        or (fmt.container not in ("raw", "caf") and fmt.container not in av.formats_available)
    ]
    if missing:
        return Check(
            "encoders",
            "error" if config.tts.format in missing else "warning",
            f"PyAV {av.__version__} cannot write {', '.join(missing)}",
            "pip install -U av (its wheels bundle FFmpeg with libopus, LAME and AAC)",
        )
    codec = av.library_versions.get("libavcodec", ())
    version = ".".join(map(str, codec))
    return Check(
        "encoders",
        "pass",
        f"PyAV {av.__version__} (libavcodec {version}): {', '.join(FILE_FORMATS)}",
    )


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
    workers = facts.get("workers") or [worker]
    listed = "; ".join(
        f"{w.get('state')} pid {w.get('pid')}, {w.get('jobs_done', 0)} jobs" for w in workers
    )
    return Check("daemon", "pass", f"daemon answers; {len(workers)} worker(s): {listed}")


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
    if kind == "systemd" and service.lingering() is False:
        return Check("service", "warning", f"{target} installed; {service.LINGER_HINT}")
    return Check("service", "pass", f"{target} installed")


def check_disk(config: Config) -> Check:
    """What msgvoice takes on disk and what is free (new work stops under the floor)."""
    root = config.state_dir
    if not root.exists():
        return Check("disk", "pass", f"{root} does not exist yet")
    used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
    free = shutil.disk_usage(root).free / 2**20
    floor = config.retention.min_free_mb
    message = f"msgvoice uses {used:.1f} MB in {root}; {free:.0f} MB free"
    if free < floor:
        return Check(
            "disk",
            "error",
            f"{message}, under the {floor:.0f} MB floor: no new voice notes are made",
            "free space on that disk, or lower retention.audio_max_mb / audio_days",
        )
    return Check("disk", "pass", message)


def check_programs(config: Config) -> Check:
    """The external programs the daemon runs can be found on the service's PATH (launchd
    gives agents a bare one)."""
    found = service.programs(config, service.service_path())
    missing = [name for name, where in found.items() if where is None]
    if missing:
        return Check(
            "programs",
            "error",
            f"not found on the service's PATH: {', '.join(missing)}",
            "install it (brew install steipete/tap/imsg) or set [channels.imessage] command "
            "to its absolute path, then msgvoice service install",
        )
    listed = ", ".join(f"{name} at {where}" for name, where in found.items())
    return Check("programs", "pass", listed or "no external programs needed")


async def report(
    config: Config,
    engine_options: dict[str, Any],
    live_worker: Callable[[], dict[str, Any]] | None = None,
    probe: Callable[[], Awaitable[Check]] | None = None,
    live_llm: Callable[[], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The doctor JSON. In a daemon, `live_worker` gives the worker facts and the engine is
    not probed again, and `live_llm` the emotion LLM's state as replies see it."""
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
    checks += [check_state_dir(config), check_disk(config), check_encoders(config)]
    checks.append(check_programs(config))
    async with httpx.AsyncClient(verify=tls()) as client:
        if live_worker is None:
            checks.append(await (probe() if probe else check_engine(config, engine_options)))
            checks.append(await check_engines(config))
            checks.append(check_installed(config))
            facts = await daemon_facts(config, client)
            installed = service.path(config, service.default_kind()).exists()
            checks.append(check_daemon(facts, installed))
            worker = (facts or {}).get("worker") or {"state": "not running"}
            llm = (facts or {}).get("emotion_llm")
        else:
            worker = live_worker()
            checks.append(check_daemon({"worker": worker}, True))
            llm = live_llm() if live_llm else None
        checks.append(await check_llm(config, client, llm))
        apps = [
            await check_telegram(config, client),
            await check_matrix(config, client),
            await check_discord(config, client),
            await check_qq(config),
            await check_feishu(config, client),
            await check_imessage(config),
        ]
        checks += [check for check in apps if check is not None]
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
