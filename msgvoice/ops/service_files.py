"""The service files: the launchd agent's property list and the systemd user unit, with the
PATH and environment they carry. launchd starts agents with a bare PATH (launchd.plist(5)), so the
installing shell's PATH and Homebrew's prefixes go in; systemd expands `%` specifiers everywhere
and `$` variables in ExecStart= (systemd.unit(5), systemd.exec(5)), so literal ones are doubled,
and quotes are escaped."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import sys
from pathlib import Path

from msgvoice.config import OPEN_FILES, Config

LAUNCHD_PATH = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")
"""The PATH launchd gives an agent that sets none."""
HOMEBREW_PATHS = ("/opt/homebrew/bin", "/opt/homebrew/sbin", "/usr/local/bin", "/usr/local/sbin")


def stop_timeout_s(config: Config) -> int:
    return int(config.daemon.drain_timeout_s + config.worker.term_grace_s + 10)


def _program(config_path: Path | None, log_file: Path | None = None) -> list[str]:
    args = [sys.executable, "-m", "msgvoice", "run"]
    args += ["--config", str(config_path.resolve())] if config_path else []
    return args + (["--log-file", str(log_file)] if log_file else [])


def service_path(environ: dict[str, str] | None = None) -> str:
    """The PATH a service gets: the installing shell's, then Homebrew's prefixes, then
    launchd's own, each once."""
    shell = (environ if environ is not None else dict(os.environ)).get("PATH", "")
    seen: dict[str, None] = {}
    for entry in [*shell.split(os.pathsep), *HOMEBREW_PATHS, *LAUNCHD_PATH]:
        if entry:
            seen.setdefault(entry, None)
    return os.pathsep.join(seen)


def programs(config: Config, search: str) -> dict[str, str | None]:
    """The external programs the daemon will run, resolved on `search` (None: not found)."""
    if not config.imessage.enabled:
        return {}
    imsg = config.imessage.command[0]
    if os.path.isabs(imsg):
        return {imsg: imsg if os.access(imsg, os.X_OK) else None}
    return {imsg: shutil.which(imsg, path=search)}


def _environment(config: Config) -> dict[str, str]:
    """PATH, resolved programs, and the variables named in `service.env` (never the whole
    environment)."""
    search = service_path()
    env = {name: os.environ[name] for name in config.service.env if name in os.environ}
    env["PATH"] = search
    resolved = programs(config, search).get(
        config.imessage.command[0] if config.imessage.enabled else ""
    )
    if resolved:
        env["MSGVOICE_IMESSAGE_COMMAND"] = json.dumps([resolved, *config.imessage.command[1:]])
    return env


def plist(config: Config, config_path: Path | None = None) -> bytes:
    """The launchd agent's property list."""
    logs = config.paths.logs
    body: dict[str, object] = {
        "Label": config.service.label,
        "ProgramArguments": _program(config_path, logs / "msgvoice.log"),
        "EnvironmentVariables": _environment(config),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "LimitLoadToSessionType": "Aqua",
        "ThrottleInterval": config.service.throttle_interval_s,
        "ExitTimeOut": stop_timeout_s(config),
        "WorkingDirectory": str(config.state_dir),
        "StandardOutPath": str(logs / "msgvoice.out.log"),
        "StandardErrorPath": str(logs / "msgvoice.err.log"),
        "ProcessType": "Standard",  # launchd.plist(5): Interactive is for apps' own UI work
        "SoftResourceLimits": {"NumberOfFiles": OPEN_FILES},
    }
    return plistlib.dumps(body)


def unit(config: Config, config_path: Path | None = None) -> str:
    """The systemd user unit."""
    exec_start = " ".join(_quote(a).replace("$", "$$") for a in _program(config_path))
    env_lines = [f"Environment={_quote(f'{k}={v}')}" for k, v in _environment(config).items()]
    return "\n".join(
        [
            "[Unit]",
            "Description=msgvoice voice-reply daemon",
            "StartLimitIntervalSec=0",  # retry for ever, RestartSec apart, as launchd does
            "",
            "[Service]",
            "Type=exec",
            f"ExecStart={exec_start}",
            f"WorkingDirectory={_escape(str(config.state_dir))}",
            *env_lines,
            "Restart=on-failure",
            f"RestartSec={config.service.throttle_interval_s}",
            f"TimeoutStopSec={stop_timeout_s(config)}",
            "KillMode=mixed",
            "KillSignal=SIGTERM",
            f"LimitNOFILE={OPEN_FILES}",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )


def _escape(text: str) -> str:
    """`%` starts a systemd specifier: a literal one is `%%`."""
    return text.replace("%", "%%")


def _quote(arg: str) -> str:
    """One word for ExecStart= or Environment=: specifiers escaped, quoted when it has
    spaces, quotes or backslashes (which are escaped inside the quotes)."""
    arg = _escape(arg)
    if not any(c in arg for c in " \"\\'"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(config: Config, kind: str, config_path: Path | None = None) -> str:
    """The service file's text."""
    return plist(config, config_path).decode() if kind == "launchd" else unit(config, config_path)
