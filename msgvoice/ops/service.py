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
absolute path (`MSGVOICE_IMESSAGE_COMMAND`). systemd: Type=exec, Restart=on-failure for ever
(StartLimitIntervalSec=0: like launchd, it never gives up), KillMode=mixed (SIGTERM to the
daemon, which stops its workers; SIGKILL to leftovers at the timeout). Besides PATH, only the
environment variables named in `service.env` are written into either file, and both files are
written 0600, since those may be secrets. The files themselves: service_files.py. The
repository's launchd/ folder holds the agent as a template (launchd/README.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from msgvoice.config import Config
from msgvoice.ops.service_files import programs, render, service_path, stop_timeout_s, unit

__all__ = ["programs", "render", "service_path", "unit"]

UNIT_NAME = "msgvoice.service"
BOOTSTRAP_BUSY = 5
"""What `launchctl bootstrap` exits with while launchd still holds a label just booted out."""
COMMAND_TIMEOUT_S = 20
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


def path(config: Config, kind: str) -> Path:
    """Where the service file is installed."""
    if kind == "launchd":
        return Path.home() / "Library" / "LaunchAgents" / f"{config.service.label}.plist"
    return Path.home() / ".config" / "systemd" / "user" / UNIT_NAME


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
    _write_private(target, render(config, kind, config_path))
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


def _write_private(target: Path, text: str) -> None:
    """Write the service file readable by its owner only: it may carry the secrets named in
    `service.env` (a bot token)."""
    partial = target.with_name(f".{target.name}.part")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    partial.replace(target)


def _load_agent(tool: str, config: Config, target: Path) -> None:
    """bootout the running agent and wait until launchd has let go of its label (bootout
    returns before it does: a bootstrap meanwhile fails with error 5, for as long as the daemon
    drains), then enable and bootstrap it, retrying error 5 until the agent's ExitTimeOut."""
    domain = f"gui/{os.getuid()}"
    service = f"{domain}/{config.service.label}"
    deadline = time.monotonic() + stop_timeout_s(config) + 5
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
