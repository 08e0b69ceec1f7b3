"""Configuration: frozen dataclasses, TOML file, then environment overrides.

Every key is `[section] key` in TOML and `MSGVOICE_<SECTION>_<KEY>` in the environment; the seeds'
env names (TTS_*, INDEX_TTS_*, LMSTUDIO_*) are honoured as aliases. An invalid value is a
`ConfigError` naming the key, the value and where it came from, never a silent default.
"""

from __future__ import annotations

import dataclasses
import sys
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msgvoice.config.channels import (
    DiscordConfig,
    FeishuConfig,
    ImessageConfig,
    MatrixConfig,
    QqConfig,
    TelegramConfig,
)
from msgvoice.config.engines import IndexTtsConfig, KokoroConfig, RemoteConfig
from msgvoice.config.sections import (
    AudioConfig,
    AutoConfig,
    DaemonConfig,
    EmotionConfig,
    HttpConfig,
    ResponderConfig,
    RetentionConfig,
    ServiceConfig,
    StateConfig,
    TextConfig,
    TtsConfig,
    WorkerConfig,
)
from msgvoice.config.values import check, from_env, typed

__all__ = [
    "ALIASES",
    "CHANNEL_SECTIONS",
    "AudioConfig",
    "AutoConfig",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "DiscordConfig",
    "EmotionConfig",
    "FeishuConfig",
    "HttpConfig",
    "ImessageConfig",
    "IndexTtsConfig",
    "KokoroConfig",
    "MatrixConfig",
    "QqConfig",
    "RemoteConfig",
    "ResponderConfig",
    "RetentionConfig",
    "ServiceConfig",
    "StateConfig",
    "StatePaths",
    "TelegramConfig",
    "TextConfig",
    "TtsConfig",
    "WorkerConfig",
    "default_path",
    "load",
    "sections",
]


class ConfigError(ValueError):
    """An invalid configuration value or file."""


@dataclass(frozen=True)
class StatePaths:
    """Where msgvoice keeps its files, all under the state dir."""

    root: Path

    @property
    def journal(self) -> Path:
        """The sqlite journal."""
        return self.root / "msgvoice.sqlite3"

    @property
    def audio(self) -> Path:
        """Voice notes and `say` output without -o."""
        return self.root / "audio"

    @property
    def tmp(self) -> Path:
        """Scratch files. Workers hand their audio over a pipe now; the daemon's start removes
        the `msgvoice-worker-*` folders that workers of older versions left here."""
        return self.root / "tmp"

    @property
    def refs(self) -> Path:
        """Engine caches (prepared reference clips)."""
        return self.root / "refs"

    @property
    def logs(self) -> Path:
        """The service's log files."""
        return self.root / "logs"


@dataclass(frozen=True)
class Config:
    state: StateConfig = field(default_factory=StateConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    emotion: EmotionConfig = field(default_factory=EmotionConfig)
    auto: AutoConfig = field(default_factory=AutoConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    responder: ResponderConfig = field(default_factory=ResponderConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    imessage: ImessageConfig = field(default_factory=ImessageConfig)
    matrix: MatrixConfig = field(default_factory=MatrixConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    qq: QqConfig = field(default_factory=QqConfig)
    feishu: FeishuConfig = field(default_factory=FeishuConfig)
    kokoro: KokoroConfig = field(default_factory=KokoroConfig)
    indextts: IndexTtsConfig = field(default_factory=IndexTtsConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Where each non-default value came from: file, env NAME or alias NAME."""

    @property
    def state_dir(self) -> Path:
        """The resolved state directory."""
        if self.state.dir:
            return Path(self.state.dir).expanduser()
        if sys.platform == "darwin":
            return Path.home() / "Library" / "Application Support" / "msgvoice"
        return Path.home() / ".local" / "state" / "msgvoice"

    @property
    def paths(self) -> StatePaths:
        """Every file location under the state dir."""
        return StatePaths(self.state_dir)

    def effective(self) -> dict[str, dict[str, Any]]:
        """Every key's value, by section (for doctor and docs)."""
        out = dataclasses.asdict(self)
        out.pop("sources")
        return out


# The seeds' env names, honoured as aliases of the dotted keys.
ALIASES: dict[str, str] = {
    "TTS_LONG_TEXT_SEGMENT_CHARS": "text.segment_chars",
    "TTS_AUTO_TIMEOUT_MS": "auto.timeout_ms",
    "TTS_AUTO_MAX_CHARS": "auto.max_chars",
    "TTS_EMO_SEGMENT_SYNTH_MAX_CHARS": "emotion.segment_synth_max_chars",
    "TTS_EMO_MAX_SEGMENTS": "emotion.max_segments",
    "TTS_EMO_SMOOTH_FACTOR": "emotion.smooth_factor",
    "INDEX_TTS_WORKER_RECYCLE_RSS_MB": "worker.rss_limit_mb",
    "INDEX_TTS_MAX_SEQ_LENGTH": "indextts.max_seq_length",
    "INDEX_TTS_DIFFUSION_STEPS": "indextts.diffusion_steps",
    "INDEX_TTS_NUM_BEAMS": "indextts.num_beams",
    "INDEX_TTS_MPS_MEMORY_FRACTION": "indextts.mps_memory_fraction",
    "INDEX_TTS_MODEL_DIR": "indextts.model_dir",
    "INDEX_TTS_CONFIG": "indextts.cfg_path",
    "INDEX_TTS_DEVICE": "indextts.device",
    "INDEX_TTS_FP16": "indextts.precision",
    "INDEXTTS_REF_AUDIO": "indextts.ref_audio",
    "INDEX_TTS_EMO_ALPHA": "indextts.emo_alpha",
    "LMSTUDIO_BASE_URL": "emotion.llm_base_url",
    "LMSTUDIO_EMO_MODEL": "emotion.llm_model",
    "LMSTUDIO_API_KEY": "emotion.llm_api_key",
    "TELEGRAM_BOT_TOKEN": "telegram.token",
    "DISCORD_BOT_TOKEN": "discord.token",
    "FEISHU_APP_ID": "feishu.app_id",
    "FEISHU_APP_SECRET": "feishu.app_secret",
}

ALIAS_VALUES: dict[str, dict[str, str]] = {
    "INDEX_TTS_FP16": {"1": "fp16", "true": "fp16", "0": "fp32", "false": "fp32"},
}
"""Aliases whose values are spelt differently from the key's (msgcode's boolean FP16)."""

CHANNEL_SECTIONS = ("telegram", "imessage", "matrix", "discord", "qq", "feishu")
"""Sections written as [channels.<name>] in TOML."""
OPEN_FILES = 10240
"""The daemon's soft open-file limit (raised to it at start, and set so by the launchd agent
and the systemd unit): macOS's OPEN_MAX, far above launchd's default of 256."""


def default_path(environ: Mapping[str, str]) -> Path:
    """The config file read when no --config is given (if it exists), and the one
    `msgvoice engine install` writes: $XDG_CONFIG_HOME/msgvoice/config.toml (~/.config when
    unset), or ~/Library/Application Support/msgvoice/config.toml on macOS."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "msgvoice" / "config.toml"
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "msgvoice" / "config.toml"


def sections() -> dict[str, type[Any]]:
    """Section name → its dataclass."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name != "sources"}


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    for name, table in data.pop("channels", {}).items():  # [channels.telegram] → [telegram]
        data[name if name in CHANNEL_SECTIONS else f"channels.{name}"] = table
    known = sections()
    for name, table in data.items():
        if name not in known:
            raise ConfigError(f"config file {path}: unknown section [{name}]")
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: [{name}] must be a table")
        names = {f.name for f in dataclasses.fields(known[name])}
        for key in table:
            if key not in names:
                raise ConfigError(f"config file {path}: unknown key {name}.{key}")
    return data


def _candidates(
    dotted: str, table: dict[str, Any], environ: Mapping[str, str], path: Path | None
) -> list[tuple[str, Any, bool]]:
    """(source, raw value, from env) for one key, weakest first: file, aliases, env."""
    section, key = dotted.split(".")
    found: list[tuple[str, Any, bool]] = []
    if key in table:
        found.append((f"file {path}", table[key], False))
    for alias, target in ALIASES.items():
        if target == dotted and alias in environ:
            raw = environ[alias]
            found.append(
                (f"alias {alias}", ALIAS_VALUES.get(alias, {}).get(raw.lower(), raw), True)
            )
    env_name = f"MSGVOICE_{section}_{key}".upper()
    if env_name in environ:
        found.append((f"env {env_name}", environ[env_name], True))
    return found


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the config from defaults, an optional TOML file, then the environment."""
    environ = {} if environ is None else environ
    file_values = _read_file(path) if path is not None else {}
    sources: dict[str, str] = {}
    built: dict[str, Any] = {}
    for sec_name, sec_cls in sections().items():
        hints = typing.get_type_hints(sec_cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(sec_cls):
            dotted = f"{sec_name}.{f.name}"
            found = _candidates(dotted, file_values.get(sec_name, {}), environ, path)
            if not found:
                continue
            source, raw, in_env = found[-1]
            try:
                value = typed(hints[f.name], from_env(hints[f.name], raw) if in_env else raw)
                check(f, value)
            except ValueError as exc:
                raise ConfigError(f"{dotted} = {raw!r} (from {source}): {exc}") from None
            values[f.name], sources[dotted] = value, source
        built[sec_name] = sec_cls(**values)
    config = Config(**built, sources=sources)
    for alias in config.tts.voice_aliases:
        if "=" not in alias or not alias.partition("=")[0] or not alias.partition("=")[2]:
            raise ConfigError(
                f"tts.voice_aliases item {alias!r} (from {sources.get('tts.voice_aliases')}): "
                'expected "name=voice", e.g. "alloy=en-us"'
            )
    if config.emotion.fixed_vector and len(config.emotion.fixed_vector) != 8:
        raise ConfigError(
            f"emotion.fixed_vector = {list(config.emotion.fixed_vector)}: expected 8 numbers"
        )
    return config
