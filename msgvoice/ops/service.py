"""Run msgvoice as a user service: a launchd agent on macOS, a systemd user unit on Linux.

launchd does not rotate logs, so the daemon writes its own, size-rotated (`--log-file`,
`retention.log_max_mb` × `retention.log_files`); launchd's stdout/stderr files catch only what
happens before logging starts. systemd's journal rotates by itself.
launchd: KeepAlive restarts the daemon when it crashes but not after a clean exit; launchd kills
the job's whole process group on stop (AbandonProcessGroup stays false), and ExitTimeOut covers
the daemon's drain plus the workers' grace. `LimitLoadToSessionType = Aqua`: Messages and its
permissions exist only in the logged-in GUI session. launchd starts agents with a bare PATH
(/usr/bin:/bin:/usr/sbin:/sbin, launchd.plist(5)), so Homebrew's programs are not found: the
agent gets the installing shell's PATH plus Homebrew's prefixes, and `imsg` is written in as an
absolute path (`MSGVOICE_IMESSAGE_COMMAND`). systemd: Type=exec, Restart=on-failure with a
start limit, KillMode=mixed (SIGTERM to the daemon, which stops its workers; SIGKILL to
leftovers at the timeout); `%` and quotes escaped as systemd.unit(5) and systemd.exec(5) say.
Besides PATH, only the environment variables named in `service.env` are written into either
file. The repository's launchd/ folder holds the agent as a template (launchd/README.md).
"""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

from msgvoice.config import OPEN_FILES, Config

UNIT_NAME = "msgvoice.service"
BOOTSTRAP_BUSY = 5
"""What `launchctl bootstrap` exits with while launchd still holds a label just booted out."""
COMMAND_TIMEOUT_S = 20
LAUNCHD_PATH = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")
"""The PATH launchd gives an agent that sets none."""
HOMEBREW_PATHS = ("/opt/homebrew/bin", "/opt/homebrew/sbin", "/usr/local/bin", "/usr/local/sbin")
GUI_SESSION_HINT = (
    "launchctl could not load the agent into gui/{uid}: that domain exists only in a logged-in "
    "GUI session. Run this from Terminal on the Mac's desktop (not over plain ssh), or log in "
    "graphically first."
)
LINGER_HINT = (
    "without lingering, a user unit stops when you log out and does not start at boot: "
    "run `loginctl enable-linger $USER` on a headless machine"
)


class ServiceError(RuntimeError):
    """The service cannot be managed here (missing launchctl/systemctl, failed command)."""


def default_kind() -> str:
    """launchd on macOS, systemd elsewhere."""
    return "launchd" if sys.platform == "darwin" else "systemd"


def _stop_timeout_s(config: Config) -> int:
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
        "ExitTimeOut": _stop_timeout_s(config),
        "WorkingDirectory": str(config.state_dir),
        "StandardOutPath": str(logs / "msgvoice.out.log"),
        "StandardErrorPath": str(logs / "msgvoice.err.log"),
        "ProcessType": "Interactive",
        "SoftResourceLimits": {"NumberOfFiles": OPEN_FILES},
    }
    return plistlib.dumps(body)


def unit(config: Config, config_path: Path | None = None) -> str:
    """The systemd user unit."""
    exec_start = " ".join(_quote(a) for a in _program(config_path))
    env_lines = [f"Environment={_quote(f'{k}={v}')}" for k, v in _environment(config).items()]
    return "\n".join(
        [
            "[Unit]",
            "Description=msgvoice voice-reply daemon",
            "StartLimitIntervalSec=300",
            "StartLimitBurst=5",
            "",
            "[Service]",
            "Type=exec",
            f"ExecStart={exec_start}",
            f"WorkingDirectory={_escape(str(config.state_dir))}",
            *env_lines,
            "Restart=on-failure",
            f"RestartSec={config.service.throttle_interval_s}",
            f"TimeoutStopSec={_stop_timeout_s(config)}",
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
        _load_agent(tool, config, target)
    else:
        for args in (("daemon-reload",), ("enable", "--now", UNIT_NAME)):
            done = _run(tool, "--user", *args)
            if done.returncode != 0:
                raise ServiceError(
                    f"systemctl --user {' '.join(args)} failed: {done.stderr.strip()}"
                )
    found = [
        f"{name} -> {where}" if where else f"{name} NOT FOUND on the service's PATH"
        for name, where in programs(config, service_path()).items()
    ]
    return f"installed and started {target}" + "".join(f"\n  {line}" for line in found)


def _load_agent(tool: str, config: Config, target: Path) -> None:
    """bootout the running agent and wait until launchd has let go of its label (bootout
    returns before it does: a bootstrap meanwhile fails with error 5, for as long as the daemon
    drains), then enable and bootstrap it, retrying error 5 until the agent's ExitTimeOut."""
    domain = f"gui/{os.getuid()}"
    service = f"{domain}/{config.service.label}"
    deadline = time.monotonic() + _stop_timeout_s(config) + 5
    _run(tool, "bootout", service)
    while _run(tool, "print", service).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    _run(tool, "enable", service)  # a label once disabled would not load again
    while True:
        done = _run(tool, "bootstrap", domain, str(target))
        if done.returncode != BOOTSTRAP_BUSY or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if done.returncode != 0:
        why = f"launchctl bootstrap failed: {done.stderr.strip() or done.returncode}"
        missing = _run(tool, "print", domain).returncode != 0
        raise ServiceError(
            why + ("\n" + GUI_SESSION_HINT.format(uid=os.getuid()) if missing else "")
        )


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


def lingering() -> bool | None:
    """Whether systemd keeps this user's units running without a login (None: cannot tell)."""
    loginctl = shutil.which("loginctl")
    if loginctl is None:
        return None
    try:
        done = _run(loginctl, "show-user", str(os.getuid()), "--property=Linger", "--value")
    except ServiceError:
        return None
    answer = done.stdout.strip()
    return {"yes": True, "no": False}.get(answer) if done.returncode == 0 else None


def loaded(config: Config, kind: str) -> bool | None:
    """Whether the service manager has the service running (None if it cannot tell)."""
    try:
        tool = _tool(kind)
        if kind == "launchd":  # loaded is not running: launchd shows a pid only for the latter
            shown = _run(tool, "print", f"gui/{os.getuid()}/{config.service.label}")
            return shown.returncode == 0 and "pid = " in shown.stdout
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
