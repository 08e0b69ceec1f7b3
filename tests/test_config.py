"""Config: defaults, TOML, env overrides, seed aliases, and loud failure on bad values."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from msgvoice.config import ALIASES, CHANNEL_SECTIONS, Config, ConfigError, load, sections

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "msgvoice.example.toml"


def test_example_file_documents_every_key_with_its_default() -> None:
    """config/msgvoice.example.toml names every key, and loading it changes nothing."""
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    for name, cls in sections().items():
        table = example["channels"][name] if name in CHANNEL_SECTIONS else example[name]
        assert set(table) == {f.name for f in dataclasses.fields(cls)}, name
    assert load(EXAMPLE) == Config()


def test_every_alias_points_at_a_real_key() -> None:
    """Each seed env name maps onto an existing section.key."""
    known = {f"{s}.{f.name}" for s, c in sections().items() for f in dataclasses.fields(c)}
    assert set(ALIASES.values()) <= known


def test_file_then_alias_then_env_each_win_over_the_last(tmp_path: Path) -> None:
    """A file value is overridden by a seed alias, which is overridden by MSGVOICE_*."""
    path = tmp_path / "c.toml"
    path.write_text("[worker]\nrss_limit_mb = 1000\n[text]\nsegment_chars = 50\n")
    assert load(path).worker.rss_limit_mb == 1000
    env = {"INDEX_TTS_WORKER_RECYCLE_RSS_MB": "2000"}
    config = load(path, env)
    assert config.worker.rss_limit_mb == 2000
    assert config.sources["worker.rss_limit_mb"] == "alias INDEX_TTS_WORKER_RECYCLE_RSS_MB"
    config = load(path, env | {"MSGVOICE_WORKER_RSS_LIMIT_MB": "3000"})
    assert config.worker.rss_limit_mb == 3000
    assert config.sources["text.segment_chars"] == f"file {path}"


def test_env_values_are_parsed_by_type() -> None:
    """Env strings become bools, floats and vectors as their keys need."""
    config = load(
        None,
        {
            "MSGVOICE_WORKER_EAGER": "off",
            "TTS_EMO_SMOOTH_FACTOR": "0.25",
            "MSGVOICE_EMOTION_FIXED_VECTOR": "0,0.5,0,0,0,0,0,0.1",
            "LMSTUDIO_BASE_URL": "http://127.0.0.1:1234/v1",
        },
    )
    assert config.worker.eager is False
    assert config.emotion.smooth_factor == 0.25
    assert config.emotion.fixed_vector == (0, 0.5, 0, 0, 0, 0, 0, 0.1)
    assert config.emotion.llm_base_url == "http://127.0.0.1:1234/v1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MSGVOICE_WORKER_RSS_LIMIT_MB": "lots"}, "worker.rss_limit_mb = 'lots'"),
        ({"TTS_LONG_TEXT_SEGMENT_CHARS": "-5"}, "alias TTS_LONG_TEXT_SEGMENT_CHARS"),
        ({"MSGVOICE_HTTP_PORT": "70000"}, "at most 65535"),
        ({"MSGVOICE_WORKER_EAGER": "maybe"}, "true or false"),
        ({"MSGVOICE_AUDIO_OPUS_RATE_HZ": "44100"}, "one of 8000"),
        ({"MSGVOICE_TTS_FORMAT": "wma"}, "tts.format"),
        ({"TTS_EMO_SMOOTH_FACTOR": "nan"}, "finite"),
        ({"MSGVOICE_EMOTION_FIXED_VECTOR": "0.1,0.2"}, "expected 8 numbers"),
    ],
)
def test_invalid_values_are_errors_naming_key_value_and_source(
    env: dict[str, str], message: str
) -> None:
    """A bad value never falls back to a default: the error names what and where."""
    with pytest.raises(ConfigError, match=message):
        load(None, env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[worker]\nrss_limit_mb = '4500'\n", "expected an integer"),
        ("[worker]\nrss_limit = 1\n", "unknown key worker.rss_limit"),
        ("[wrker]\n", r"unknown section \[wrker\]"),
        ("[worker\n", "not valid TOML"),
    ],
)
def test_bad_files_are_errors(tmp_path: Path, text: str, message: str) -> None:
    """Typos, wrong types and broken TOML in the file stop start-up with a clear message."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    """A config path that does not exist is reported, not ignored."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("engine", "cores", "workers"),
    [("espeak", 1, 1), ("espeak", 2, 2), ("espeak", 8, 2), ("kokoro", 8, 1)],
)
def test_the_auto_worker_count_is_one_per_core_for_a_light_engine(
    monkeypatch: pytest.MonkeyPatch, engine: str, cores: int, workers: int
) -> None:
    """`worker.count` 0: a light engine gets one worker per core, at most 2 (its jobs are
    encoded in their workers, so a second core pays); a model engine one."""
    from msgvoice import compose  # noqa: PLC0415

    monkeypatch.setattr(compose.os, "cpu_count", lambda: cores)
    config = load(None, {"MSGVOICE_WORKER_COUNT": "0", "MSGVOICE_TTS_ENGINE": engine})
    assert compose.worker_count(config) == workers
