"""`msgvoice doctor`: pass on a fresh machine, clear errors for broken set-ups, bounded."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import httpx
import psutil
import pytest

from msgvoice.net import tls
from tests.conftest import run_msgvoice
from tests.daemon_util import DaemonProcess, free_port
from tests.fake_llm import FakeLLM


def doctor(env: dict[str, str] | None = None, *args: str) -> tuple[int, dict]:
    done = run_msgvoice(
        "doctor", "--json", *args, env={"MSGVOICE_HTTP_PORT": str(free_port()), **(env or {})}
    )
    return done.returncode, json.loads(done.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_fresh_machine_is_pass_or_warning_and_leaves_no_process() -> None:
    """Defaults only (no LLM, no daemon, no service): never an error; the engine probe really
    speaks; the JSON has the documented shape; no worker is left behind."""
    before = {p.pid for p in psutil.process_iter()}
    code, report = doctor()
    assert code in (0, 2) and report["status"] in ("pass", "warning")
    checks = by_name(report)
    assert checks["engine"]["status"] == "pass" and "spoke" in checks["engine"]["message"]
    assert checks["state_dir"]["status"] == "pass"
    assert checks["llm"]["status"] == "pass" and "lexicon" in checks["llm"]["message"]
    assert report["config"]["worker"]["rss_limit_mb"] == 4500
    assert report["config"]["emotion"]["max_segments"] == 4
    assert report["worker"]["state"] == "not running"
    engines = checks["engines"]["message"]
    assert "espeak: installed" in engines and "indextts2: not installed" in engines
    assert ours_left_running(before) == []


def ours_left_running(before: set[int]) -> list[psutil.Process]:
    """Workers started since `before` by this test (they carry its state dir), still alive."""
    state = os.environ["MSGVOICE_STATE_DIR"]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid in before or "msgvoice.worker" not in " ".join(proc.info["cmdline"] or []):
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("MSGVOICE_STATE_DIR") == state:
                found.append(proc)
    return found


def test_invalid_config_value_is_an_error() -> None:
    """A bad env value makes doctor exit 1 with the key named."""
    code, report = doctor({"MSGVOICE_WORKER_RSS_LIMIT_MB": "big"})
    assert code == 1 and report["status"] == "error"
    assert "worker.rss_limit_mb" in by_name(report)["config"]["message"]


def test_config_sources_are_reported() -> None:
    """Where each value came from (env, alias) shows in the report."""
    _, report = doctor({"TTS_EMO_MAX_SEGMENTS": "3"})
    assert report["config_sources"]["emotion.max_segments"] == "alias TTS_EMO_MAX_SEGMENTS"
    assert report["config"]["emotion"]["max_segments"] == 3


def test_unwritable_state_dir_is_an_error(tmp_path: Path) -> None:
    """A state dir that cannot be created is an error with a fix hint."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, report = doctor({"MSGVOICE_STATE_DIR": str(blocker / "state")})
    assert code == 1
    check = by_name(report)["state_dir"]
    assert check["status"] == "error" and check["fix"]


def test_unreachable_llm_is_a_warning() -> None:
    """An LLM that does not answer is a warning (styles still work), with a fix."""
    code, report = doctor({"LMSTUDIO_BASE_URL": f"http://127.0.0.1:{free_port()}"})
    assert code == 2
    check = by_name(report)["llm"]
    assert check["status"] == "warning" and "LM Studio" in check["fix"]


async def test_reachable_llm_with_missing_model_is_a_warning() -> None:
    """A live server that does not list the configured model is a warning naming it."""
    async with FakeLLM() as llm:
        import asyncio  # noqa: PLC0415

        good = await asyncio.to_thread(
            doctor, {"LMSTUDIO_BASE_URL": llm.url + "/v1", "LMSTUDIO_EMO_MODEL": "emo-model"}
        )
        bad = await asyncio.to_thread(
            doctor, {"LMSTUDIO_BASE_URL": llm.url, "LMSTUDIO_EMO_MODEL": "other"}
        )
    assert by_name(good[1])["llm"]["status"] == "pass"
    assert by_name(bad[1])["llm"]["status"] == "warning"
    assert "'other'" in by_name(bad[1])["llm"]["message"]


def test_broken_engine_is_an_error() -> None:
    """An engine that cannot load is an error, bounded, with a fix hint."""
    code, report = doctor(
        {"MSGVOICE_TTS_ENGINE": "no_such_module:Engine", "MSGVOICE_WORKER_MAX_START_FAILURES": "1"}
    )
    assert code == 1
    check = by_name(report)["engine"]
    assert check["status"] == "error" and "no_such_module" in check["message"]


@pytest.mark.slow
def test_running_daemon_facts_appear_and_match_metrics(clean_env: Path) -> None:
    """With a daemon running, doctor shows its worker's pid and counters, as /metrics does."""
    daemon = DaemonProcess(clean_env).start()
    try:
        import httpx  # noqa: PLC0415

        code, report = doctor({"MSGVOICE_HTTP_PORT": str(daemon.port)})
        assert code in (0, 2)
        assert report["worker"]["pid"] == daemon.worker_pid()
        assert by_name(report)["daemon"]["status"] == "pass"
        metrics = httpx.get(daemon.url + "/metrics", timeout=5, verify=tls()).text
        jobs_done = float(report["worker"]["jobs_done"])
        assert f'msgvoice_worker_jobs_total{{worker="0"}} {jobs_done}' in metrics
    finally:
        daemon.signal(__import__("signal").SIGTERM)


async def test_doctor_checks_the_telegram_token_and_webhook(tmp_path: Path) -> None:
    """getMe with a refused token is an error naming where the token came from; a webhook with
    delete_webhook off is a warning; a good token names the bot."""
    from msgvoice.config import load  # noqa: PLC0415
    from msgvoice.ops.apps import check_telegram  # noqa: PLC0415
    from tests.fake_telegram import TOKEN, FakeTelegram  # noqa: PLC0415

    async with (
        FakeTelegram(webhook_url="https://example.invalid/h") as bot,
        httpx.AsyncClient(verify=tls()) as c,
    ):
        base = {"MSGVOICE_TELEGRAM_ENABLED": "true", "MSGVOICE_TELEGRAM_BASE_URL": bot.url}
        bad = await check_telegram(load(None, base | {"TELEGRAM_BOT_TOKEN": "1:NO"}), c)
        hooked = load(
            None, base | {"TELEGRAM_BOT_TOKEN": TOKEN, "MSGVOICE_TELEGRAM_DELETE_WEBHOOK": "false"}
        )
        warned = await check_telegram(hooked, c)
        good = await check_telegram(load(None, base | {"TELEGRAM_BOT_TOKEN": TOKEN}), c)
    assert bad is not None and bad.status == "error" and "alias TELEGRAM_BOT_TOKEN" in bad.message
    assert warned is not None and warned.status == "warning" and "409" in warned.message
    assert good is not None and good.status == "pass" and "@msgvoice_bot" in good.message


async def test_doctor_says_what_imsg_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Full Disk Access doctor says what to grant to which program; with the bridge
    up it says voice notes go as voice bubbles."""
    from msgvoice.config import load  # noqa: PLC0415
    from msgvoice.ops.apps import check_imessage  # noqa: PLC0415
    from tests.test_channels import Imsg  # noqa: PLC0415

    imsg = Imsg(tmp_path / "imsg")
    monkeypatch.setenv("FAKE_IMSG_DIR", str(imsg.dir))
    config = load(None, imsg.env())
    (imsg.dir / "no-fda").touch()
    denied = await check_imessage(config)
    (imsg.dir / "no-fda").unlink()
    (imsg.dir / "bridge").touch()
    bubbles = await check_imessage(config)
    assert denied is not None and denied.status == "error" and "Full Disk Access" in denied.fix
    assert bubbles is not None and bubbles.status == "pass" and "voice bubbles" in bubbles.message


async def test_doctor_times_a_real_analysis_and_reads_lm_studios_state() -> None:
    """With LM Studio up, doctor reads its REST model list (loaded or not) and times a real
    one-segment analysis; a model that cannot answer (JIT off, not loaded) is a warning."""
    from msgvoice.config import load  # noqa: PLC0415
    from msgvoice.ops.llm_check import check_llm  # noqa: PLC0415

    async with FakeLLM() as llm, httpx.AsyncClient(verify=tls()) as client:
        config = load(None, {"LMSTUDIO_BASE_URL": llm.url, "LMSTUDIO_EMO_MODEL": "emo-model"})
        good = await check_llm(config, client)
        llm.loaded, llm.jit = False, False
        cold = await check_llm(config, client)
    assert good.status == "pass" and ", loaded: analysis in" in good.message
    assert cold.status == "warning" and "not loaded" in cold.message and "llm_autoload" in cold.fix
