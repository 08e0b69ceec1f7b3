"""The Kokoro-82M engine, run as users run it: in its own venv via worker.python, on a
checkpoint of the real architecture with random weights (tests/kokoro_checkpoint.py) loaded
through the real `kokoro` code, with misaki's real G2P. The sound is noise; its length,
loudness, the 24 kHz rate, the voices and every error path are real.

Importing kokoro and loading the model take about 9 s of CPU, so the checkpoints are made in one
generator run (and kept in pytest's cache under a key of what makes them), one daemon on them
answers the tests that only need speech, and `say` and doctor load the model once each, where
they are what is tested."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from msgvoice.net import tls
from msgvoice.worker.engines.kokoro import phoneme_chunks, text_runs
from tests.conftest import read_audio, rms, run_msgvoice
from tests.daemon_util import DaemonProcess, engine_daemon, free_port, speak
from tests.kokoro_util import KOKORO_PYTHON, TEXT, needs_kokoro


def kokoro_env(weights: Path | None, tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "MSGVOICE_TTS_ENGINE": "kokoro",
        "MSGVOICE_WORKER_PYTHON": str(KOKORO_PYTHON),
        "MSGVOICE_KOKORO_MODEL_DIR": str(weights or ""),
        "MSGVOICE_STATE_DIR": str(tmp_path / "state"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        **more,
    }


@pytest.fixture(scope="module")
def daemon(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """`msgvoice run` on the Kokoro checkpoint, its worker loaded; voice zf_xiaobei."""
    folder = tmp_path_factory.mktemp("kokoro-daemon")
    with engine_daemon(folder / "state", **kokoro_env(weights, folder)) as running:
        yield running


def say(
    weights: Path, tmp_path: Path, line: str, name: str, **env: str
) -> tuple[dict, np.ndarray, int]:
    out = tmp_path / name
    done = run_msgvoice(
        "say", line, "--json", "-o", str(out), env=kokoro_env(weights, tmp_path, **env), timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    samples, rate = read_audio(out)
    return json.loads(done.stdout), samples, rate


def test_text_splits_into_chinese_and_english_runs() -> None:
    """Latin words get their own runs; a Chinese run keeps its digits and punctuation."""
    assert text_runs("我用 Python 写了3个程序，OK吗？") == [
        ("zh", "我用"),
        ("en", "Python"),
        ("zh", "写了3个程序，"),
        ("en", "OK"),
        ("zh", "吗？"),
    ]
    assert text_runs("Hello, world 42!") == [("en", "Hello, world 42!")]
    assert text_runs("，。…") == []


def test_long_phoneme_strings_are_cut_at_sentences_then_spaces() -> None:
    words = " ".join(["ni→xau↓"] * 200)
    chunks = phoneme_chunks(words)
    assert all(len(c) <= 510 for c in chunks) and len(chunks) == 4
    assert " ".join(chunks) == words
    assert phoneme_chunks("x" * 1200) == ["x" * 510, "x" * 510, "x" * 180]
    sentences = " ".join([f"ni→xau↓ {'a' * 90}."] * 6)
    chunks = phoneme_chunks(sentences)
    assert [len(c) for c in chunks] == [199, 199, 199]  # two whole sentences a piece
    assert " ".join(chunks) == sentences


@needs_kokoro
@pytest.mark.slow
@pytest.mark.timeout(300)  # a checkpoint, torch and the model, more than once
def test_say_speaks_chinese_with_kokoro_at_24k(weights_v11: Path, tmp_path: Path) -> None:
    """`msgvoice say` end to end on the engine, at Kokoro's own 24 kHz: on the v1.1-zh weights,
    with an English word inside the Chinese (v1.0 speaks through the daemon below)."""
    env = {"MSGVOICE_TTS_VOICE": "zf_001"}
    report, samples, rate = say(weights_v11, tmp_path, f"/tts {TEXT} OK", "zh.wav", **env)
    assert report["engine"] == "kokoro" and rate == 24_000
    assert 1.5 < len(samples) / rate < 12 and rms(samples) > 0.001


@needs_kokoro
@pytest.mark.slow
def test_english_inside_chinese_is_spoken_at_24k(daemon: DaemonProcess) -> None:
    """English inside Chinese is spoken, not dropped; Kokoro's own 24 kHz comes through."""
    mixed, rate = speak(daemon, "我用 Python 写代码")
    plain, _ = speak(daemon, "我用写代码")
    assert rate == 24_000 and len(mixed) > len(plain) + 0.2 * rate
    note, _ = speak(daemon, "Good night, 晚安", response_format="opus")
    assert len(note) > 0


@needs_kokoro
@pytest.mark.slow
def test_emotion_reaches_kokoro_speed_and_loudness(daemon: DaemonProcess) -> None:
    """Angry is faster and louder than sad: Kokoro's duration divisor and the gain (the
    checkpoint speaks at a real level, so the worker never scales a hot peak down)."""
    angry, _ = speak(daemon, "今天天气很好。", style="生气")
    sad, _ = speak(daemon, "今天天气很好。", style="难过")
    assert len(angry) < 0.8 * len(sad)
    assert rms(angry) > 1.3 * rms(sad)  # gains 1.33 and 0.87; no peak reaches full scale


@needs_kokoro
@pytest.mark.slow
def test_a_seed_gives_the_same_samples_and_another_seed_others(daemon: DaemonProcess) -> None:
    """The vocoder's harmonic source draws random phases and noise: a request's seed fixes
    them, so the same request gives the same samples (the bf16 vocoder included)."""
    one, _ = speak(daemon, "今天天气很好。", seed=7)
    again, _ = speak(daemon, "今天天气很好。", seed=7)
    other, _ = speak(daemon, "今天天气很好。", seed=8)
    assert np.array_equal(one, again) and not np.array_equal(one, other)


@needs_kokoro
@pytest.mark.slow
def test_voices_by_name_blend_and_a_missing_one(daemon: DaemonProcess) -> None:
    """Another voice, a blend of two, a voice that is not there (400 naming it), and each
    voice's language in the list (from the first letter of its name, as Kokoro names them)."""
    heart, _ = speak(daemon, "你好", voice="af_heart")
    blend, _ = speak(daemon, "你好", voice="af_heart,zf_xiaobei")
    default, _ = speak(daemon, "你好")
    assert not np.array_equal(heart, default) and not np.array_equal(blend, default)
    assert not np.array_equal(blend, heart)
    refused = httpx.post(
        daemon.url + "/v1/audio/speech",
        json={"model": "kokoro", "input": "你好", "voice": "zf_nobody"},
        timeout=30,
        verify=tls(),
    )
    assert refused.status_code == 400 and "zf_nobody" in refused.json()["error"]["message"]
    listed = httpx.get(daemon.url + "/v1/audio/voices", timeout=10, verify=tls()).json()["voices"]
    languages = {v["id"]: v["languages"] for v in listed}
    assert languages["af_heart"] == ["en-us"] and languages["zf_xiaobei"] == ["zh"]


@needs_kokoro
@pytest.mark.slow
def test_a_missing_default_voice_is_one_line_before_torch_loads(
    weights: Path, tmp_path: Path
) -> None:
    """A configured voice the weights lack fails the start with one line naming it and the
    voices there are (found from the files, before torch and the model load)."""
    env = kokoro_env(weights, tmp_path, MSGVOICE_TTS_VOICE="zf_nobody")
    done = run_msgvoice("say", "/tts 你好", "-o", str(tmp_path / "x.wav"), env=env, timeout=300)
    assert done.returncode == 1
    assert "zf_nobody" in done.stderr and "af_heart" in done.stderr
    assert "Traceback" not in done.stderr


def doctor(env: dict[str, str]) -> dict[str, dict]:
    """`msgvoice doctor --json`'s checks by name (its engine check loads the model)."""
    env["MSGVOICE_HTTP_PORT"] = str(free_port())
    done = run_msgvoice("doctor", "--json", env=env, timeout=300)
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


@needs_kokoro
@pytest.mark.slow
@pytest.mark.timeout(300)  # a checkpoint, torch and the model
def test_v1_1_zh_weights_in_a_folder_read_zhuyin(weights_v11: Path, tmp_path: Path) -> None:
    """Kokoro-82M-v1.1-zh in a folder (its file name, its voices, a zhuyin vocabulary) is read
    through misaki's v1.1 frontend, as kokoro's pipeline does for that repo: doctor's engine
    check speaks through it at 24 kHz and names the folder and the frontend."""
    env = kokoro_env(weights_v11, tmp_path, MSGVOICE_TTS_VOICE="zf_001")
    engine = doctor(env)["engine"]
    assert engine["status"] == "pass", engine
    assert "at 24000 Hz" in engine["message"] and f"model_dir {weights_v11}" in engine["message"]
    assert "misaki zh 1.1 (zhuyin)" in engine["message"]


@needs_kokoro
@pytest.mark.slow
@pytest.mark.timeout(300)  # a checkpoint, torch and the model
def test_doctor_finds_the_weights_in_the_hub_cache_or_says_how_to_fetch_them(
    weights: Path, tmp_path: Path
) -> None:
    """Weights in the Hugging Face cache (its own layout: refs/main names a snapshot whose files
    link to blobs; offline) are found and spoken with; with none there, doctor says how to
    pre-fetch them (a folder in model_dir is named by the test above)."""
    repo, commit = tmp_path / "hub" / "models--hexgrad--Kokoro-82M", "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(weights, repo / "snapshots" / commit, copy_function=os.symlink)
    cached = doctor(kokoro_env(None, tmp_path))["engine"]
    assert cached["status"] == "pass" and "hub cache hexgrad/Kokoro-82M" in cached["message"]
    assert "Chinese G2P: misaki zh (IPA)" in cached["message"]

    shutil.rmtree(tmp_path / "hub")
    missing = doctor(kokoro_env(None, tmp_path))["engine"]
    assert missing["status"] == "error" and "hf download hexgrad/Kokoro-82M" in missing["message"]


SAME_AS_STOCK = """
import sys, types
import numpy as np
import torch
from kokoro import istftnet
from msgvoice.worker.engines import kokoro
from msgvoice.worker.protocol import Prosody
engine = kokoro.KokoroEngine(model_dir=sys.argv[1], precision="fp32")
ours, _ = engine.synthesize(sys.argv[2], None, Prosody(), None, seed=3)
parts = kokoro.RESBLOCK_PARTS
blocks = [m for m in engine.model.decoder.modules() if all(hasattr(m, p) for p in parts)]
for block in blocks:
    block.forward = types.MethodType(istftnet.AdaINResBlock1.forward, block)
stock, _ = engine.synthesize(sys.argv[2], None, Prosody(), None, seed=3)
print(len(blocks), ours.size, stock.size, float(np.max(np.abs(ours - stock))))
auto = kokoro.KokoroEngine(model_dir=sys.argv[1], precision="auto")
if auto.precision == "fp32":  # no native bf16 on this CPU: nothing cast ahead
    print("fp32")
else:
    ahead, _ = auto.synthesize(sys.argv[2], None, Prosody(), None, seed=3)
    layers = (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.Linear)
    for layer in [m for m in auto.model.decoder.modules() if isinstance(m, layers)]:
        layer.float()  # autocast casts them again on every call
    each_call, _ = auto.synthesize(sys.argv[2], None, Prosody(), None, seed=3)
    print(ahead.size == each_call.size and float(np.max(np.abs(ahead - each_call))))
"""


@needs_kokoro
@pytest.mark.slow
def test_the_in_place_vocoder_blocks_give_the_stock_blocks_samples(weights: Path) -> None:
    """The residual blocks msgvoice computes in place (`resblock_in_place`) give, in fp32 at
    one seed, exactly the samples of kokoro's own `AdaINResBlock1.forward`; and the bf16
    vocoder's layers cast once at load give exactly what autocast casting them on every call
    gives (where the CPU has native bf16)."""
    done = subprocess.run(
        [str(KOKORO_PYTHON), "-c", SAME_AS_STOCK, str(weights), "你好，世界。"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    blocks, ours, stock, worst, cast_ahead = done.stdout.split()
    assert int(blocks) == 8 and ours == stock and float(worst) == 0.0
    assert cast_ahead in ("fp32", "0.0"), cast_ahead
