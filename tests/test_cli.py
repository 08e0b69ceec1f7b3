"""`msgvoice say` end to end, as a user runs it: real processes, real files, real audio."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import soundfile as sf

from tests.conftest import REPO, read_audio, rms, run_msgvoice
from tests.fake_llm import FakeLLM, Reply, vectors_json

LONG_TEXT = (
    "今天天气很好，我们下午一起去公园散步吧。"
    "Then we can have tea at five! "
    "晚上回家做饭，看一会儿书，然后早点休息。"
) * 45


def say(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_msgvoice("say", *args, env=env)


@pytest.mark.parametrize(
    ("fmt", "container", "codec"),
    [
        ("ogg", "OGG", "OPUS"),
        ("wav", "WAV", "PCM_16"),
        ("flac", "FLAC", "PCM_16"),
        ("mp3", "MP3", "MPEG_LAYER_III"),
    ],
)
def test_say_writes_playable_speech_in_every_format(
    tmp_path: Path, fmt: str, container: str, codec: str
) -> None:
    """A /tts line becomes a file in the asked format holding ~1-4 s of real speech."""
    out = tmp_path / f"hello.{fmt}"
    done = say("/tts 开心：你好，世界", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    info = sf.info(str(out))
    assert (info.format, info.subtype) == (container, codec)
    samples, _ = read_audio(out)
    assert 0.8 < info.duration < 4.0 and rms(samples) > 0.03


def test_format_flag_wins_and_default_goes_to_the_state_dir(clean_env: Path) -> None:
    """--format picks the codec; without -o the file lands under the state dir."""
    done = say("你好", "--format", "flac", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    path = Path(report["path"])
    assert path.parent == clean_env / "audio" and path.suffix == ".flac"
    assert sf.info(str(path)).format == "FLAC"


def test_json_report_shows_lexicon_emotion_without_an_llm(tmp_path: Path) -> None:
    """With no LLM, `/tts 生气：…` reports the lexicon and an angry-dominant vector."""
    done = say("/tts 生气：你怎么又迟到了", "-o", str(tmp_path / "a.ogg"), "--json")
    report = json.loads(done.stdout)
    assert report["format"] == "ogg" and report["engine"] == "espeak"
    assert report["emotion"]["source"] == "lexicon"
    vector = report["emotion"]["vector"]
    assert vector.index(max(vector)) == 1  # angry
    assert report["duration_s"] > 0.5
    assert {"emotion_ms", "synth_ms", "encode_ms", "total_ms"} <= set(report["timings"])


async def test_json_report_shows_llm_when_one_is_configured(tmp_path: Path) -> None:
    """With LM Studio's env names pointing at a live server, the source is `llm`."""
    async with FakeLLM([Reply(vectors_json([0, 0.6, 0, 0, 0, 0, 0, 0]))]) as llm:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "msgvoice",
            "say",
            "/tts 生气：你怎么又迟到了",
            "--json",
            "-o",
            str(tmp_path / "a.ogg"),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            env={
                **os.environ,
                "LMSTUDIO_BASE_URL": llm.url + "/v1",
                "LMSTUDIO_EMO_MODEL": "emo-model",
            },
        )
        stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert json.loads(stdout)["emotion"]["source"] == "llm"
    assert len(llm.requests) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/tts"], "用法"),
        (["/tts 温柔："], "用法"),
        (["   "], "nothing to speak"),
        (["/mode voice on"], "not /mode"),
        (["你好", "--format", "wma"], "invalid choice"),
        (["你好", "-o", "{tmp}/x.wma"], "unknown format '.wma'"),
        (["你好", "-o", "/etc/passwd/x.ogg"], "is not a directory"),
        (["你好", "-o", "{tmp}/missing/x.ogg"], "is not a directory"),
        (["你好", "-o", "{tmp}"], "not writable"),
        (["你好", "--config", "{tmp}/none.toml"], "cannot read config file"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_file(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Empty text, unknown formats, unwritable paths and bad config: exit 2, one clear line,
    no output file."""
    done = say(*[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_invalid_env_value_is_a_startup_error(tmp_path: Path) -> None:
    """A bad env value stops `say` with the key and the value named."""
    done = say("你好", "-o", str(tmp_path / "x.ogg"), env={"TTS_EMO_MAX_SEGMENTS": "many"})
    assert done.returncode == 2 and "emotion.max_segments = 'many'" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
def test_three_thousand_characters_are_split_and_joined(tmp_path: Path, fmt: str) -> None:
    """A 3,000-character text is spoken segment by segment into one file of plausible length,
    as long as the report says: an mp3's segments are encoded apart and joined, each join
    adding at most a frame of padding (26 ms) to a stream that starts with LAME's 50 ms."""
    assert len(LONG_TEXT) > 3000
    out = tmp_path / f"long.{fmt}"
    done = say(LONG_TEXT, "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["segments"] >= 15
    samples, rate = read_audio(out)
    # eSpeak Mandarin speaks ~4-8 characters a second
    assert len(LONG_TEXT) / 10 < len(samples) / rate < len(LONG_TEXT) / 3
    assert rms(samples) > 0.03
    beyond = len(samples) / rate - report["duration_s"]
    assert -0.01 < beyond < (0.01 if fmt == "ogg" else 0.06 + 0.027 * report["segments"])


def _worker_of(proc: subprocess.Popen[bytes], within: float = 20.0) -> psutil.Process:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            if "msgvoice.worker" in " ".join(child.cmdline()):
                return child
        time.sleep(0.05)
    raise AssertionError("no worker appeared")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_say_leaves_no_worker(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM or even SIGKILL of `msgvoice say` mid-job leaves no worker process running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgvoice", "say", LONG_TEXT * 3, "-o", str(tmp_path / "x.ogg")],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    worker = _worker_of(proc)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    _gone, alive = psutil.wait_procs([worker], timeout=10)
    assert not alive, f"worker {worker.pid} outlived `say`"
    assert not (tmp_path / "x.ogg").exists()


def test_the_daemon_log_file_rotates(tmp_path: Path) -> None:
    """`run --log-file` writes the log there, rotated at retention.log_max_mb, keeping
    retention.log_files old files (launchd does not rotate what it captures)."""
    from tests.daemon_util import free_port  # noqa: PLC0415

    log_file = tmp_path / "logs" / "msgvoice.log"
    env = {
        "MSGVOICE_HTTP_PORT": str(free_port()),
        "MSGVOICE_RETENTION_LOG_MAX_MB": "0.002",
        "MSGVOICE_RETENTION_LOG_FILES": "2",
    }
    lines = "".join(f"/mode style 第{i}种风格\n" for i in range(60))
    done = run_msgvoice("run", "--console", "--log-file", str(log_file), env=env, input=lines)
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in log_file.parent.iterdir())
    assert files == ["msgvoice.log", "msgvoice.log.1", "msgvoice.log.2"]
    assert all(p.stat().st_size <= 2100 + 400 for p in log_file.parent.iterdir())
    assert "msgvoice running" not in done.stderr  # the log went to the file


def test_an_unusable_state_dir_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A state dir the daemon cannot use stops it at start with one clear line, exit 1."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = run_msgvoice("run", env={"MSGVOICE_STATE_DIR": str(blocker / "state")}, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("msgvoice: cannot start:")
    assert len(done.stderr.strip().splitlines()) == 1
