"""The launchd plist and systemd unit parse and carry the keys a trustworthy service needs."""

from __future__ import annotations

import configparser
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

from msgvoice.config import load
from msgvoice.ops import service
from tests.conftest import run_msgvoice


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_msgvoice(*args, env=env, timeout=60)


def test_printed_plist_parses_with_every_key(tmp_path: Path) -> None:
    """`service print --launchd` is a valid plist: absolute interpreter, RunAtLoad, KeepAlive
    only after a crash, throttle, an exit timeout covering the drain, logs, and only the named
    environment."""
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
    assert args[4:] == ["--config", str(config_file.resolve())]
    assert plist["Label"] == "com.msgvoice.daemon"
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] == 10
    config = load(None, {})
    assert plist["ExitTimeOut"] >= config.daemon.drain_timeout_s + config.worker.term_grace_s
    assert plist["StandardErrorPath"].endswith("msgvoice.err.log")
    assert plist["EnvironmentVariables"] == {"LMSTUDIO_BASE_URL": "http://127.0.0.1:1234"}
    assert "AbandonProcessGroup" not in plist  # launchd kills the worker with the daemon


def test_printed_unit_has_restart_limits_and_stop_keys() -> None:
    """`service print --systemd` is a unit with Restart=on-failure, start limits in [Unit],
    TimeoutStopSec, KillMode, and no environment that was not named."""
    done = cli("service", "print", "--systemd", env={"SECRET_TOKEN": "x"})
    assert done.returncode == 0, done.stderr
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
    unit.read_string(done.stdout)
    assert unit["Unit"]["StartLimitIntervalSec"] and unit["Unit"]["StartLimitBurst"]
    assert unit["Service"]["Restart"] == "on-failure"
    assert int(unit["Service"]["TimeoutStopSec"]) >= 35
    assert unit["Service"]["KillMode"] == "mixed"
    assert unit["Service"]["ExecStart"].split()[1:4] == ["-m", "msgvoice", "run"]
    assert "Environment" not in unit["Service"] and "SECRET_TOKEN" not in done.stdout
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
