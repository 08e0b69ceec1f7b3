"""The one table of audio formats: file suffixes, containers, codecs, content types.

The CLI's `--format` and suffixes, `tts.format`'s choices, the HTTP channel's audio routes and
the speech API's `response_format` all derive from it. Pure data: anyone may import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    """One way of writing audio."""

    name: str
    suffixes: tuple[str, ...]
    """File suffixes that mean this format, the canonical one first."""
    container: str
    """libsndfile's container name (RAW for bare PCM)."""
    codec: str
    """libsndfile's subtype."""
    content_type: str
    streams: bool
    """Whether bytes can be sent as they are encoded (no seeking back)."""
    api_name: str
    """The name OpenAI's `response_format` uses for it."""

    @property
    def suffix(self) -> str:
        """The canonical file suffix, without the dot."""
        return self.suffixes[0].lstrip(".")


_ALL = (
    Format("ogg", (".ogg", ".opus", ".oga"), "OGG", "OPUS", "audio/ogg", True, "opus"),
    Format("wav", (".wav",), "WAV", "PCM_16", "audio/wav", True, "wav"),
    Format("flac", (".flac",), "FLAC", "PCM_16", "audio/flac", False, "flac"),
    Format("mp3", (".mp3",), "MP3", "MPEG_LAYER_III", "audio/mpeg", False, "mp3"),
)
FILE_FORMATS: dict[str, Format] = {f.name: f for f in _ALL}
"""Formats a voice note or `say` output file can have, by msgvoice's name."""

PCM = Format("pcm", (".pcm",), "RAW", "PCM_16", "audio/pcm", True, "pcm")
"""Bare 16-bit little-endian mono PCM (the speech API's `pcm`, at PCM_RATE)."""
PCM_RATE = 24_000

API_FORMATS: dict[str, Format] = {f.api_name: f for f in (*_ALL, PCM)}
"""The speech API's `response_format` values."""

SUFFIXES: dict[str, str] = {s: f.name for f in _ALL for s in f.suffixes}
"""File suffix → format name (for `say -o hello.opus`)."""

OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
MP3_MAX_RATE = 48_000


def by_suffix(name: str) -> Format | None:
    """The format a file name's suffix names, if any."""
    dot = name.rfind(".")
    return FILE_FORMATS.get(SUFFIXES.get(name[dot:].lower(), "")) if dot >= 0 else None


def output_rate(fmt: str, engine_rate: int, opus_rate_hz: int) -> int:
    """The sample rate a format is written at."""
    if fmt == "ogg":
        return opus_rate_hz
    if fmt == "pcm":
        return PCM_RATE
    if fmt == "mp3" and engine_rate > MP3_MAX_RATE:
        return MP3_MAX_RATE
    return engine_rate
