"""The IndexTTS2 adapter against a fake `indextts` package with upstream's exact signatures:
every knob becomes the exact keyword argument it should, and every unavailable path is clear."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from msgvoice.config import load
from msgvoice.worker.protocol import EngineUnavailable, Prosody
from tests.conftest import REPO, read_audio, rms, run_msgvoice

FAKES = Path(__file__).resolve().parent / "fakes"
ANGRY = (0.0, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fake packages first on the path, a checkpoints folder and a 44.1 kHz stereo clip."""
    monkeypatch.syspath_prepend(str(FAKES))
    for name in [m for m in sys.modules if m == "torch" or m.startswith(("indextts", "fakelog"))]:
        monkeypatch.delitem(sys.modules, name)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_INDEXTTS_LOG", str(log))
    models = tmp_path / "checkpoints"
    models.mkdir()
    (models / "config.yaml").write_text("version: 2.0\n")
    clip = tmp_path / "voice.flac"
    t = np.arange(44_100) / 44_100
    sf.write(str(clip), np.stack([np.sin(2 * np.pi * 200 * t)] * 2, axis=1) * 0.3, 44_100)
    options = {
        "model_dir": str(models),
        "ref_audio": str(clip),
        "cache_dir": str(tmp_path / "refs"),
    }
    return {"log": log, "options": options, "clip": clip, "tmp": tmp_path}


def calls(log: Path, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return [x for x in lines if x["event"] == event]


def engine(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch, device: str = "cpu", **knobs: Any
) -> Any:
    monkeypatch.setenv("FAKE_TORCH_DEVICE", device)
    from msgvoice.worker.engines.indextts2 import IndexTts2Engine  # noqa: PLC0415

    return IndexTts2Engine(**setup["options"], **knobs)


def test_constructor_and_infer_get_exactly_the_knobs(setup: dict, monkeypatch) -> None:
    """Config knobs become upstream's keyword arguments, nothing more and nothing else."""
    eng = engine(
        setup,
        monkeypatch,
        "cuda:7.5",
        use_accel=True,
        use_torch_compile=True,
        use_deepspeed=True,
        num_beams=1,
        top_k=20,
        top_p=0.9,
        temperature=0.7,
        max_mel_tokens=1200,
        emo_alpha=0.6,
        interval_silence_ms=150,
        max_text_tokens_per_segment=100,
    )
    samples, rate = eng.synthesize("你好", None, Prosody(), ANGRY)
    (init,) = calls(setup["log"], "init")
    assert init == {
        "event": "init",
        "cfg_path": str(Path(setup["options"]["model_dir"]) / "config.yaml"),
        "model_dir": setup["options"]["model_dir"],
        "use_fp16": True,
        "device": "cuda:0",
        "use_cuda_kernel": True,
        "use_deepspeed": True,
        "use_accel": True,
        "use_torch_compile": True,
    }
    (infer,) = calls(setup["log"], "infer")
    assert infer["text"] == "你好" and infer["output_path"] is None
    assert infer["emo_vector"] == pytest.approx([0, 0.525, 0, 0, 0, 0, 0, 0])  # biased
    assert infer["emo_alpha"] == 0.6
    assert infer["use_emo_text"] is False and infer["emo_text"] is None
    assert infer["interval_silence"] == 150 and infer["max_text_tokens_per_segment"] == 100
    assert infer["generation_kwargs"] == {
        "num_beams": 1,
        "top_k": 20,
        "top_p": 0.9,
        "temperature": 0.7,
        "max_mel_tokens": 1200,
    }
    assert rate == 22_050 and samples.dtype == np.int16 and samples.shape[1] == 1


def test_reference_clip_is_16k_mono_and_cached_by_content(setup: dict, monkeypatch) -> None:
    """Any clip is converted once to 16 kHz mono; a copy elsewhere reuses the same file."""
    eng = engine(setup, monkeypatch)
    eng.synthesize("一", None, Prosody(), None)
    (infer,) = calls(setup["log"], "infer")
    assert infer["prompt"] == {"rate": 16_000, "channels": 1}
    refs = list((setup["tmp"] / "refs").iterdir())
    assert len(refs) == 1
    copy = setup["tmp"] / "elsewhere.flac"
    copy.write_bytes(setup["clip"].read_bytes())
    voices = setup["tmp"] / "voices"
    voices.mkdir()
    (voices / "alice.flac").write_bytes(setup["clip"].read_bytes())
    from msgvoice.worker.engines.references import Voices  # noqa: PLC0415

    same = Voices(str(copy), str(voices), setup["tmp"] / "refs")
    assert same.prepared("alice") == same.prepared(None) == str(refs[0])
    sf.write(str(voices / "bob.wav"), np.zeros(1600, np.float32) + 0.1, 8000)
    assert same.prepared("bob") != str(refs[0])


@pytest.mark.parametrize(
    ("device", "wanted", "precision", "fp16"),
    [
        ("cuda:8.6", "auto", "bf16", True),
        ("cuda:7.5", "auto", "fp16", True),
        ("cuda:6.1", "auto", "fp32", False),
        ("cpu", "auto", "fp32", False),
        ("cpu", "fp16", "fp32", False),
        ("mps", "auto", "fp32", False),
        ("mps", "fp16", "fp16", True),
    ],
)
def test_precision_follows_the_gpu_architecture(  # noqa: PLR0917 (pytest parameters)
    setup: dict, monkeypatch, device: str, wanted: str, precision: str, fp16: bool
) -> None:
    """bf16 on sm_80+, fp16 on sm_70/75, fp32 on CPU; MPS as configured."""
    eng = engine(setup, monkeypatch, device, precision=wanted)
    assert eng.precision == precision
    assert calls(setup["log"], "init")[0]["use_fp16"] is fp16
    if precision == "bf16":  # 1.0.2 has no bf16 switch: said, not hidden
        assert any(x.startswith("bf16") for x in eng.facts()["ignored"])


def test_knobs_the_installed_indextts_cannot_take_are_reported(setup: dict, monkeypatch) -> None:
    """diffusion_steps (hard-coded 25 in 1.0.2) is not passed (it would break generate) but
    listed; max_seq_length re-sizes the s2mel caches."""
    eng = engine(setup, monkeypatch, diffusion_steps=15, max_seq_length=4096)
    eng.synthesize("好", None, Prosody(), None)
    assert "diffusion_steps" not in calls(setup["log"], "infer")[0]["generation_kwargs"]
    assert any("diffusion_steps=15" in x for x in eng.facts()["ignored"])
    assert calls(setup["log"], "setup_caches") == [
        {"event": "setup_caches", "max_batch_size": 1, "max_seq_length": 4096}
    ]


def test_torch_knobs_and_cache_emptying(setup: dict, monkeypatch) -> None:
    """TF32 and cudnn flags are set on CUDA, the MPS memory fraction on MPS, and the device
    cache is emptied after every job."""
    eng = engine(setup, monkeypatch, "cuda:8.0", tf32=False, cudnn_benchmark=True)
    assert eng.torch.backends.cuda.matmul.allow_tf32 is False
    assert eng.torch.backends.cudnn.benchmark is True
    for _ in range(2):
        eng.synthesize("好", None, Prosody(), None)
    assert len(calls(setup["log"], "torch.cuda.empty_cache")) == 2
    mps = engine(setup, monkeypatch, "mps", mps_memory_fraction=0.5)
    mps.synthesize("好", None, Prosody(), None)
    assert calls(setup["log"], "torch.mps.set_per_process_memory_fraction") == [
        {"event": "torch.mps.set_per_process_memory_fraction", "fraction": 0.5}
    ]
    assert len(calls(setup["log"], "torch.mps.empty_cache")) == 1


def test_emotion_text_path_only_when_configured(setup: dict, monkeypatch) -> None:
    """With use_emo_text the vector is not sent and IndexTTS2 reads the text itself."""
    eng = engine(setup, monkeypatch, use_emo_text=True)
    eng.synthesize("好", None, Prosody(), ANGRY)
    infer = calls(setup["log"], "infer")[0]
    assert infer["use_emo_text"] is True and infer["emo_vector"] is None


def test_stage_timings_are_read_from_its_printout(setup: dict, monkeypatch) -> None:
    """GPT, S2Mel and vocoder milliseconds come back with each synthesis."""
    eng = engine(setup, monkeypatch)
    eng.synthesize("好", None, Prosody(), None)
    assert eng.last_stats == {
        "gpt_ms": 400.0,
        "gpt_forward_ms": 50.0,
        "s2mel_ms": 200.0,
        "vocoder_ms": 100.0,
        "engine_total_ms": 800.0,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no_checkpoints", "checkpoints not found"),
        ("no_clip", "reference clip"),
        ("no_voice_at_all", "needs a reference voice"),
        ("no_package", "cannot be imported"),
    ],
)
def test_unavailable_paths_say_what_is_missing(
    setup: dict, monkeypatch, change: str, message: str
) -> None:
    """Missing checkpoints, a missing clip or no installed package: EngineUnavailable with
    what to fix."""
    options = dict(setup["options"])
    if change == "no_checkpoints":
        options["model_dir"] = str(setup["tmp"] / "nothing")
    elif change == "no_clip":
        options["ref_audio"] = str(setup["tmp"] / "missing.wav")
    elif change == "no_voice_at_all":
        options["ref_audio"] = ""
    else:
        monkeypatch.setitem(sys.modules, "indextts", None)
    from msgvoice.worker.engines.indextts2 import IndexTts2Engine  # noqa: PLC0415

    with pytest.raises(EngineUnavailable, match=message):
        IndexTts2Engine(**options)


def say_env(setup: dict[str, Any], **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO)]),
        "MSGVOICE_TTS_ENGINE": "indextts2",
        "FAKE_TORCH_DEVICE": "cuda:8.0",
        "INDEX_TTS_MODEL_DIR": setup["options"]["model_dir"],
        "INDEXTTS_REF_AUDIO": str(setup["clip"]),
        "INDEX_TTS_NUM_BEAMS": "1",
        "FAKE_INDEXTTS_LOG": str(setup["log"]),
        **extra,
    }


def test_say_through_the_real_worker_reports_stages_and_rtf(setup: dict) -> None:
    """`msgvoice say` with indextts2: the worker runs the adapter, the int16 output becomes
    float audio, and the report carries GPT/S2Mel/vocoder times and RTF."""
    out = setup["tmp"] / "x.wav"
    done = run_msgvoice("say", "/tts 生气：你好", "--json", "-o", str(out), env=say_env(setup))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["engine"] == "indextts2" and report["fallback_from"] is None
    assert {"gpt_ms", "s2mel_ms", "vocoder_ms", "rtf"} <= set(report["timings"])
    infer = calls(setup["log"], "infer")[0]
    assert infer["generation_kwargs"]["num_beams"] == 1
    assert max(infer["emo_vector"]) == infer["emo_vector"][1]  # angry, from the lexicon
    samples, _ = read_audio(out)
    assert 0.3 < rms(samples) < 0.4  # a 0.5 sine, scaled from int16 without clipping


def test_fallback_engine_speaks_when_indextts_cannot_start(setup: dict) -> None:
    """With checkpoints missing and espeak as fallback, say still speaks and says so."""
    out = setup["tmp"] / "y.ogg"
    env = say_env(
        setup,
        INDEX_TTS_MODEL_DIR=str(setup["tmp"] / "none"),
        MSGVOICE_TTS_FALLBACK="espeak",
        MSGVOICE_WORKER_MAX_START_FAILURES="1",
    )
    done = run_msgvoice("say", "你好", "--json", "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["engine"] == "espeak" and report["fallback_from"] == "indextts2"


def test_doctor_reports_unavailable_engine_and_ignored_knobs(setup: dict) -> None:
    """doctor names missing checkpoints as an error, and knobs IndexTTS2 cannot take as a
    warning."""

    def doctor(**extra: str) -> dict[str, Any]:
        done = run_msgvoice("doctor", "--json", env=say_env(setup, MSGVOICE_HTTP_PORT="9", **extra))
        return {c["name"]: c for c in json.loads(done.stdout)["checks"]}

    missing = doctor(
        INDEX_TTS_MODEL_DIR=str(setup["tmp"] / "none"), MSGVOICE_WORKER_MAX_START_FAILURES="1"
    )
    assert missing["engine"]["status"] == "error"
    assert "checkpoints not found" in missing["engine"]["message"]
    knobs = doctor(INDEX_TTS_DIFFUSION_STEPS="15")
    assert knobs["engine"]["status"] == "warning"
    assert "diffusion_steps=15" in knobs["engine"]["message"]


def test_config_aliases_reach_the_engine_options() -> None:
    """msgcode's env names set the IndexTTS2 options the worker receives."""
    from msgvoice.compose import engine_options  # noqa: PLC0415

    config = load(
        None,
        {
            "MSGVOICE_TTS_ENGINE": "indextts2",
            "INDEX_TTS_MODEL_DIR": "/m",
            "INDEXTTS_REF_AUDIO": "/r.wav",
            "INDEX_TTS_FP16": "1",
            "INDEX_TTS_EMO_ALPHA": "0.5",
            "INDEX_TTS_NUM_BEAMS": "1",
            "INDEX_TTS_DIFFUSION_STEPS": "15",
            "INDEX_TTS_DEVICE": "mps",
        },
    )
    options = engine_options(config)
    assert options["model_dir"] == "/m" and options["ref_audio"] == "/r.wav"
    assert options["precision"] == "fp16" and options["emo_alpha"] == 0.5
    assert options["num_beams"] == 1 and options["diffusion_steps"] == 15
    assert options["device"] == "mps"


STYLE_VECTORS = {  # style → (msgvoice's vector, what reaches IndexTTS2), as in the README
    "开心": ([0.55, 0, 0, 0, 0, 0, 0, 0], [0.516, 0, 0, 0, 0, 0, 0, 0]),
    "兴奋": ([0.45, 0, 0, 0, 0, 0, 0.25, 0], [0.422, 0, 0, 0, 0, 0, 0.172, 0]),
    "撒娇": ([0.4, 0, 0, 0, 0, 0, 0.1, 0.15], [0.375, 0, 0, 0, 0, 0, 0.069, 0.084]),
    "生气": ([0, 0.55, 0, 0, 0, 0, 0, 0], [0, 0.481, 0, 0, 0, 0, 0, 0]),
    "不耐烦": ([0, 0.35, 0, 0, 0.1, 0, 0, 0], [0, 0.306, 0, 0, 0.094, 0, 0, 0]),
    "难过": ([0, 0, 0.55, 0, 0, 0, 0, 0], [0, 0, 0.55, 0, 0, 0, 0, 0]),
    "委屈": ([0, 0, 0.4, 0, 0, 0.2, 0, 0], [0, 0, 0.4, 0, 0, 0.188, 0, 0]),
    "害怕": ([0, 0, 0, 0.55, 0, 0, 0, 0], [0, 0, 0, 0.55, 0, 0, 0, 0]),
    "紧张": ([0, 0, 0.1, 0.35, 0, 0, 0, 0], [0, 0, 0.1, 0.35, 0, 0, 0, 0]),
    "厌恶": ([0, 0, 0, 0, 0.55, 0, 0, 0], [0, 0, 0, 0, 0.516, 0, 0, 0]),
    "低落": ([0, 0, 0, 0, 0, 0.55, 0, 0], [0, 0, 0, 0, 0, 0.516, 0, 0]),
    "疲惫": ([0, 0, 0, 0, 0, 0.35, 0, 0.25], [0, 0, 0, 0, 0, 0.328, 0, 0.141]),
    "惊讶": ([0, 0, 0, 0, 0, 0, 0.55, 0], [0, 0, 0, 0, 0, 0, 0.378, 0]),
    "惊喜": ([0.35, 0, 0, 0, 0, 0, 0.35, 0], [0.328, 0, 0, 0, 0, 0, 0.241, 0]),
    "温柔": ([0.15, 0, 0, 0, 0, 0, 0, 0.55], [0.141, 0, 0, 0, 0, 0, 0, 0.309]),
    "平静": ([0, 0, 0, 0, 0, 0, 0, 0.65], [0, 0, 0, 0, 0, 0, 0, 0.366]),
}


@pytest.mark.parametrize("style", list(STYLE_VECTORS))
def test_each_built_in_style_reaches_indextts2_on_its_own_scale(style: str) -> None:
    """Every built-in style's vector, before and after IndexTTS2's own bias (its web UI's
    normalize_emo_vec(apply_bias=True)), is the one the README lists."""
    from msgvoice.speech.emotion import from_lexicon  # noqa: PLC0415
    from msgvoice.worker.engines.indextts2 import on_indextts_scale  # noqa: PLC0415

    before, after = STYLE_VECTORS[style]
    vector = from_lexicon(style)
    assert vector == pytest.approx(before, abs=5e-4)
    assert on_indextts_scale(vector) == pytest.approx(after, abs=6e-4)


def test_the_bias_comes_before_the_sum_cap() -> None:
    """A strong LLM vector is biased first, then scaled to a sum of 0.8, as upstream does."""
    from msgvoice.worker.engines.indextts2 import on_indextts_scale  # noqa: PLC0415

    scaled = on_indextts_scale([0.7, 0, 0, 0, 0, 0, 0.7, 0.7])
    assert sum(scaled) == pytest.approx(0.8)
    assert scaled[0] / scaled[6] == pytest.approx(0.9375 / 0.6875)


def test_emo_alpha_above_one_is_a_config_error() -> None:
    """IndexTTS2 clamps the emotion weight to [0, 1]: a larger one is refused, naming the key."""
    from msgvoice.config import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match=r"indextts.emo_alpha = '1.5'"):
        load(None, {"INDEX_TTS_EMO_ALPHA": "1.5"})
    assert load(None, {}).indextts.emo_alpha == 0.65


def test_qwen_emotion_model_is_not_loaded_unless_the_text_path_is_on(
    setup: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a newer IndexTTS2 whose constructor takes use_qwen_emo, it is False unless
    use_emo_text is on (no Qwen model in memory for nothing)."""
    engine(setup, monkeypatch)  # imports the fake package
    from indextts import infer_v2  # noqa: PLC0415

    base = infer_v2.IndexTTS2

    class Newer(base):  # type: ignore[misc, valid-type]  # the fake, one argument newer
        def __init__(self, *args: Any, use_qwen_emo: bool = True, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.use_qwen_emo = use_qwen_emo

    monkeypatch.setattr(infer_v2, "IndexTTS2", Newer)
    assert engine(setup, monkeypatch).tts.use_qwen_emo is False
    assert engine(setup, monkeypatch, use_emo_text=True).tts.use_qwen_emo is True


def test_hub_downloads_that_fail_say_what_to_fetch(
    setup: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IndexTTS2 1.0.2 fetches w2v-bert-2.0, MaskGCT and campplus at first start: without a
    network the engine is unavailable with a message naming them and how to pre-fetch."""
    engine(setup, monkeypatch)
    from indextts import infer_v2  # noqa: PLC0415

    def offline(*_args: Any, **_kwargs: Any) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")

    monkeypatch.setattr(infer_v2.IndexTTS2, "__init__", offline)
    with pytest.raises(EngineUnavailable, match=r"w2v-bert-2\.0.*HF_HUB_OFFLINE"):
        engine(setup, monkeypatch)
