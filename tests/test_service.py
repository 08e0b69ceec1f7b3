"""The launchd plist and systemd unit parse and carry the keys a trustworthy service needs."""

from __future__ import annotations

import configparser
import json
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from msgvoice.config import load
from msgvoice.ops import doctor, service
from tests.conftest import REPO, run_msgvoice


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_msgvoice(*args, env=env, timeout=60)


def test_printed_plist_parses_with_every_key(tmp_path: Path) -> None:
    """`service print --launchd` is a valid plist: absolute interpreter, RunAtLoad, KeepAlive
    only after a crash, throttle, an exit timeout covering the drain, logs, and only the named
    environment besides PATH."""
    config_file = tmp_path / "c.toml"
    config_file.write_text('[service]\nenv = ["LMSTUDIO_BASE_URL", "NOT_SET_ANYWHERE"]\n')
    done = cli(
        "service",
        "print",
        "--launchd",
        "--config",
        str(config_file),
        env={"LMSTUDIO_BASE_URL": "http://127.0.0.1:1234", "SECRET_TOKEN": "x"},
    )
    assert done.returncode == 0, done.stderr
    plist = plistlib.loads(done.stdout.encode())
    args = plist["ProgramArguments"]
    assert Path(args[0]).is_absolute() and args[1:4] == ["-m", "msgvoice", "run"]
    assert args[4:6] == ["--config", str(config_file.resolve())]
    assert args[6] == "--log-file" and args[7].endswith("logs/msgvoice.log")  # rotated by msgvoice
    assert plist["Label"] == "com.msgvoice.daemon"
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] == 10
    config = load(None, {})
    assert plist["ExitTimeOut"] >= config.daemon.drain_timeout_s + config.worker.term_grace_s
    assert plist["StandardErrorPath"].endswith("msgvoice.err.log")
    env = plist["EnvironmentVariables"]
    assert env.pop("PATH") and env == {"LMSTUDIO_BASE_URL": "http://127.0.0.1:1234"}
    assert "AbandonProcessGroup" not in plist  # launchd kills the worker with the daemon


PLACEHOLDERS = {"PYTHON": "/PYTHON", "STATE_DIR": "/STATE", "PATH": "/PATH"}
TEMPLATE = REPO / "launchd" / "com.msgvoice.daemon.plist"


def template_form(plist: dict[str, Any], path_value: str) -> dict[str, Any]:
    """A rendered agent with its machine-specific values as the template's placeholders."""
    text = plistlib.dumps(plist).decode()
    text = text.replace(path_value, "{{PATH}}").replace(sys.executable, "{{PYTHON}}")
    return dict(plistlib.loads(text.replace("/STATE", "{{STATE_DIR}}").encode()))


def test_the_launchd_template_agrees_with_service_print() -> None:
    """launchd/com.msgvoice.daemon.plist (the file a Mac user reads or loads by hand) is what
    `msgvoice service print --launchd` writes, with placeholders for this machine's paths: the
    PATH that finds Homebrew, Aqua sessions only, KeepAlive after a crash."""
    env = {"MSGVOICE_STATE_DIR": "/STATE", "PATH": "/usr/bin:/bin"}
    done = cli("service", "print", "--launchd", env=env)
    assert done.returncode == 0, done.stderr
    printed = plistlib.loads(done.stdout.encode())
    path_value = printed["EnvironmentVariables"]["PATH"]
    assert path_value.split(":")[:4] == [
        "/usr/bin",
        "/bin",
        "/opt/homebrew/bin",
        "/opt/homebrew/sbin",
    ]
    assert printed["LimitLoadToSessionType"] == "Aqua"
    assert template_form(printed, path_value) == plistlib.loads(TEMPLATE.read_bytes())


def test_the_agent_finds_imsg_by_absolute_path(tmp_path: Path) -> None:
    """With iMessage on, the agent carries imsg as an absolute path resolved on the shell's
    PATH (launchd's own bare PATH would not find Homebrew's), and install would report it."""
    bin_dir = tmp_path / "homebrew" / "bin"
    bin_dir.mkdir(parents=True)
    imsg = bin_dir / "imsg"
    imsg.write_text("#!/bin/sh\n")
    imsg.chmod(0o755)
    env = {"MSGVOICE_IMESSAGE_ENABLED": "true", "PATH": f"/usr/bin:/bin:{bin_dir}"}
    done = cli("service", "print", "--launchd", env=env)
    agent_env = plistlib.loads(done.stdout.encode())["EnvironmentVariables"]
    assert json.loads(agent_env["MSGVOICE_IMESSAGE_COMMAND"]) == [str(imsg), "rpc"]
    assert str(bin_dir) in agent_env["PATH"].split(":")


def test_doctor_flags_a_program_the_service_cannot_find(tmp_path: Path) -> None:
    """doctor names a program the daemon needs but the service's PATH does not have."""
    env = {"MSGVOICE_IMESSAGE_ENABLED": "true", "PATH": str(tmp_path), "HOME": str(tmp_path)}
    config = load(None, env)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", str(tmp_path))
        check = doctor.check_programs(config)
    assert check.status == "error" and "imsg" in check.message and "absolute path" in check.fix


def test_printed_unit_has_restart_limits_and_stop_keys() -> None:
    """`service print --systemd` is a unit with Restart=on-failure that never gives up,
    TimeoutStopSec, KillMode, and no environment that was not named."""
    done = cli("service", "print", "--systemd", env={"SECRET_TOKEN": "x"})
    assert done.returncode == 0, done.stderr
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
    unit.read_string(done.stdout)
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"  # keeps retrying, as launchd does
    assert int(unit["Service"]["RestartSec"]) >= 1
    assert unit["Service"]["Restart"] == "on-failure"
    assert int(unit["Service"]["TimeoutStopSec"]) >= 35
    assert unit["Service"]["KillMode"] == "mixed" and unit["Service"]["Type"] == "exec"
    assert unit["Service"]["ExecStart"].split()[1:4] == ["-m", "msgvoice", "run"]
    assert unit["Service"]["Environment"].startswith("PATH=")
    assert "SECRET_TOKEN" not in done.stdout and "network-online" not in done.stdout
    assert unit["Install"]["WantedBy"] == "default.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    """systemd's own verifier accepts the unit."""
    path = tmp_path / "msgvoice.service"
    path.write_text(service.unit(load(None, {})))
    runtime = tmp_path / "xdg"  # the user manager wants a runtime dir, even to verify
    runtime.mkdir()
    done = subprocess.run(
        ["systemd-analyze", "verify", "--user", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"XDG_RUNTIME_DIR": str(runtime)},
    )
    assert done.returncode == 0, done.stderr


def test_unit_escapes_percent_and_quotes(tmp_path: Path) -> None:
    """A `%` in a path is `%%` (not a systemd specifier), and quotes are escaped."""
    state = tmp_path / '50% "done"'
    unit = service.unit(load(None, {"MSGVOICE_STATE_DIR": str(state)}))
    assert "WorkingDirectory=" + str(state).replace("%", "%%") in unit


@pytest.mark.parametrize("kind", ["launchd", "systemd"])
def test_install_without_the_service_manager_exits_2(kind: str) -> None:
    """Where launchctl or systemctl is missing, install says so and exits 2."""
    tool = "launchctl" if kind == "launchd" else "systemctl"
    if shutil.which(tool):
        pytest.skip(f"{tool} is present here")
    done = cli("service", "install", f"--{kind}")
    assert done.returncode == 2 and f"{tool} not found" in done.stderr


def test_status_reports_not_installed(tmp_path: Path) -> None:
    """status names the file it looked for."""
    done = cli("service", "status", "--systemd", env={"HOME": str(tmp_path)})
    assert done.returncode == 0 and "not installed" in done.stdout


def fake_launchctl(tmp_path: Path, **env: str) -> dict[str, str]:
    """An environment whose PATH finds tests/fake_launchctl.py as `launchctl`."""
    bin_dir, state = tmp_path / "bin", tmp_path / "launchctl"
    bin_dir.mkdir()
    state.mkdir()
    tool = bin_dir / "launchctl"
    tool.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "fake_launchctl.py"}" "$@"\n'
    )
    tool.chmod(0o755)
    path = f"{bin_dir}:{os.environ.get('PATH', '')}"
    return {"PATH": path, "HOME": str(tmp_path), "FAKE_LAUNCHCTL_DIR": str(state), **env}


def launchctl_calls(env: dict[str, str]) -> list[dict[str, Any]]:
    calls = Path(env["FAKE_LAUNCHCTL_DIR"]) / "calls.jsonl"
    return [json.loads(line) for line in calls.read_text().splitlines()]


def test_reinstall_over_a_running_agent_waits_for_launchd_to_let_go(tmp_path: Path) -> None:
    """install, then install again at once: the second waits until launchd has released the
    label (bootstrap meanwhile fails with error 5), enables it and loads it; status then says
    it runs (a pid, not just loaded)."""
    env = fake_launchctl(tmp_path, MSGVOICE_STATE_DIR=str(tmp_path / "state"))
    first = cli("service", "install", "--launchd", env=env)
    assert first.returncode == 0, first.stderr
    again = cli("service", "install", "--launchd", env=env)
    assert again.returncode == 0, again.stderr
    calls = launchctl_calls(env)
    boots = [c["code"] for c in calls if c["args"][0] == "bootstrap"]
    assert boots[0] == 0 and boots[-1] == 0 and BUSY in boots[1:]
    enabled = [i for i, c in enumerate(calls) if c["args"][0] == "enable"]
    assert enabled and enabled[-1] < len(calls) - 1
    status = cli("service", "status", "--launchd", env=env)
    assert "loaded and running" in status.stdout


def test_without_a_gui_session_install_says_so(tmp_path: Path) -> None:
    """The gui/UID domain is missing (ssh, no desktop login): one error with the hint, exit 2."""
    env = fake_launchctl(
        tmp_path, FAKE_LAUNCHCTL_NO_GUI="1", MSGVOICE_STATE_DIR=str(tmp_path / "s")
    )
    done = cli("service", "install", "--launchd", env=env)
    assert done.returncode == 2 and "logged-in GUI session" in done.stderr
    assert "125" in done.stderr and "Traceback" not in done.stderr


BUSY = service.BOOTSTRAP_BUSY


def test_a_dollar_in_the_command_is_not_a_systemd_variable(tmp_path: Path) -> None:
    """systemd expands `$NAME` in ExecStart=: a literal `$` (in a config path) is `$$`."""
    config = tmp_path / "my$HOME.toml"
    config.write_text("")
    unit = service.unit(load(None, {}), config)
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "my$$HOME.toml" in exec_start


def test_the_installed_file_with_a_secret_is_its_owners_alone(tmp_path: Path) -> None:
    """A token named in service.env goes into the agent, and the agent file is 0600."""
    env = fake_launchctl(
        tmp_path,
        MSGVOICE_STATE_DIR=str(tmp_path / "state"),
        MSGVOICE_SERVICE_ENV="TELEGRAM_BOT_TOKEN",
        TELEGRAM_BOT_TOKEN="123:SECRET",
    )
    done = cli("service", "install", "--launchd", env=env)
    assert done.returncode == 0, done.stderr
    (agent,) = (tmp_path / "Library" / "LaunchAgents").glob("*.plist")
    assert "123:SECRET" in agent.read_text() and agent.stat().st_mode & 0o777 == 0o600
