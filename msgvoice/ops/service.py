"""Run msgvoice as a user service: a launchd agent on macOS, a systemd user unit on Linux.

launchd: KeepAlive restarts the daemon when it crashes but not after a clean exit; launchd kills
the job's whole process group on stop (AbandonProcessGroup stays false), and ExitTimeOut covers
the daemon's drain plus the worker's grace. systemd: Restart=on-failure with a start limit,
KillMode=mixed (SIGTERM to the daemon, which stops its worker; SIGKILL to leftovers at the
timeout). Only the environment variables named in `service.env` are written into either file.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

from msgvoice.config import Config

UNIT_NAME = "msgvoice.service"
COMMAND_TIMEOUT_S = 20
GUI_SESSION_HINT = (
    "launchctl could not load the agent into gui/{uid}: that domain exists only in a logged-in "
    "GUI session. Run this from Terminal on the Mac's desktop (not over plain ssh), or log in "
    "graphically first."
)


class ServiceError(RuntimeError):
    """The service cannot be managed here (missing launchctl/systemctl, failed command)."""


def default_kind() -> str:
    """launchd on macOS, systemd elsewhere."""
    return "launchd" if sys.platform == "darwin" else "systemd"


def _stop_timeout_s(config: Config) -> int:
    return int(config.daemon.drain_timeout_s + config.worker.term_grace_s + 10)


def _program(config_path: Path | None) -> list[str]:
    args = [sys.executable, "-m", "msgvoice", "run"]
    return args + (["--config", str(config_path.resolve())] if config_path else [])


def _environment(config: Config) -> dict[str, str]:
    """The named variables only, with their current values (never the whole environment)."""
    return {name: os.environ[name] for name in config.service.env if name in os.environ}


def plist(config: Config, config_path: Path | None = None) -> bytes:
    """The launchd agent's property list."""
    logs = config.paths.logs
    body: dict[str, object] = {
        "Label": config.service.label,
        "ProgramArguments": _program(config_path),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": config.service.throttle_interval_s,
        "ExitTimeOut": _stop_timeout_s(config),
        "WorkingDirectory": str(config.state_dir),
        "StandardOutPath": str(logs / "msgvoice.out.log"),
        "StandardErrorPath": str(logs / "msgvoice.err.log"),
        "ProcessType": "Interactive",
    }
    env = _environment(config)
    if env:
        body["EnvironmentVariables"] = env
    return plistlib.dumps(body)


def unit(config: Config, config_path: Path | None = None) -> str:
    """The systemd user unit."""
    exec_start = " ".join(_quote(a) for a in _program(config_path))
    env_lines = [f'Environment="{k}={v}"' for k, v in _environment(config).items()]
    return "\n".join(
        [
            "[Unit]",
            "Description=msgvoice voice-reply daemon",
            "After=network-online.target",
            "StartLimitIntervalSec=300",
            "StartLimitBurst=5",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={exec_start}",
            f"WorkingDirectory={config.state_dir}",
            *env_lines,
            "Restart=on-failure",
            f"RestartSec={config.service.throttle_interval_s}",
            f"TimeoutStopSec={_stop_timeout_s(config)}",
            "KillMode=mixed",
            "KillSignal=SIGTERM",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(c in arg for c in ' "\\') else arg


def path(config: Config, kind: str) -> Path:
    """Where the service file is installed."""
    if kind == "launchd":
        return Path.home() / "Library" / "LaunchAgents" / f"{config.service.label}.plist"
    return Path.home() / ".config" / "systemd" / "user" / UNIT_NAME


def render(config: Config, kind: str, config_path: Path | None = None) -> str:
    """The service file's text."""
    return plist(config, config_path).decode() if kind == "launchd" else unit(config, config_path)


def _tool(kind: str) -> str:
    name = "launchctl" if kind == "launchd" else "systemctl"
    found = shutil.which(name)
    if found is None:
        raise ServiceError(
            f"{name} not found: --{kind} services need "
            f"{'macOS' if kind == 'launchd' else 'systemd'}"
        )
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{' '.join(args)} did not finish in {COMMAND_TIMEOUT_S}s") from exc


def install(config: Config, kind: str, config_path: Path | None = None) -> str:
    """Write the service file and load it; returns what was done."""
    tool = _tool(kind)
    target = path(config, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    (config.paths.logs).mkdir(parents=True, exist_ok=True)
    target.write_text(render(config, kind, config_path), encoding="utf-8")
    if kind == "launchd":
        domain = f"gui/{os.getuid()}"
        _run(tool, "bootout", f"{domain}/{config.service.label}")
        done = _run(tool, "bootstrap", domain, str(target))
        if done.returncode != 0:
            hint = GUI_SESSION_HINT.format(uid=os.getuid())
            raise ServiceError(f"launchctl bootstrap failed: {done.stderr.strip()}\n{hint}")
    else:
        for args in (("daemon-reload",), ("enable", "--now", UNIT_NAME)):
            done = _run(tool, "--user", *args)
            if done.returncode != 0:
                raise ServiceError(
                    f"systemctl --user {' '.join(args)} failed: {done.stderr.strip()}"
                )
    return f"installed and started {target}"


def uninstall(config: Config, kind: str) -> str:
    """Stop and unload the service and remove its file."""
    tool = _tool(kind)
    target = path(config, kind)
    if kind == "launchd":
        _run(tool, "bootout", f"gui/{os.getuid()}/{config.service.label}")
    else:
        _run(tool, "--user", "disable", "--now", UNIT_NAME)
        _run(tool, "--user", "daemon-reload")
    target.unlink(missing_ok=True)
    return f"removed {target}"


def loaded(config: Config, kind: str) -> bool | None:
    """Whether the service manager has the service running (None if it cannot tell)."""
    try:
        tool = _tool(kind)
        if kind == "launchd":
            return _run(tool, "print", f"gui/{os.getuid()}/{config.service.label}").returncode == 0
        return _run(tool, "--user", "is-active", "--quiet", UNIT_NAME).returncode == 0
    except ServiceError:
        return None


def status(config: Config, kind: str) -> str:
    """One line on whether the service is installed and loaded."""
    target = path(config, kind)
    if not target.exists():
        return f"not installed ({target} does not exist)"
    state = {
        True: "loaded and running",
        False: "installed but not running",
        None: "installed; service manager not available here",
    }[loaded(config, kind)]
    return f"{state}: {target}"
