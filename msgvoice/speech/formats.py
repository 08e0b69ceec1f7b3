"""The one table of audio formats: file suffixes, containers, codecs, content types.

The CLI's `--format` and suffixes, `tts.format`'s choices, the HTTP channel's audio routes, the
speech API's `response_format` and the encoder all derive from it. Pure data: anyone may
import it. Containers and codecs are FFmpeg's names (PyAV); `raw` is written by msgvoice itself.
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
    """FFmpeg's muxer (`raw`: PCM or WAV written by msgvoice; `caf`: msgvoice's CAF writer)."""
    codec: str
    """FFmpeg's encoder."""
    content_type: str
    streams: bool
    """Whether bytes can be sent as they are encoded (the muxer needs no seeking back)."""
    api_name: str = ""
    """The name OpenAI's `response_format` uses for it (empty: not offered there)."""
    rates: tuple[int, ...] = ()
    """The sample rates the codec takes (empty: any)."""
    completes_header: bool = False
    """Whether the muxer, given a seekable file, goes back to complete its header (FLAC's
    STREAMINFO: total samples, MD5; MP3's Xing frame: length and gapless delay): a whole
    file is written seekable, a stream is not."""
    joins: str = ""
    """How a long text's segments, encoded side by side, become one stream: `bytes`, their
    streams joined (MP3 and ADTS frames stand alone); `packets`, their bare packets put into
    one container (Opus, whose Ogg and CAF wrap one stream); empty: they cannot be."""

    @property
    def suffix(self) -> str:
        """The canonical file suffix, without the dot."""
        return self.suffixes[0].lstrip(".")


OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
MP3_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
AAC_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)

_ALL = (
    Format("ogg", (".ogg", ".opus", ".oga"), "ogg", "libopus", "audio/ogg", True, "opus",
           OPUS_RATES, joins="packets"),
    Format("wav", (".wav",), "raw", "pcm_s16le", "audio/wav", True, "wav"),
    Format("flac", (".flac",), "flac", "flac", "audio/flac", True, "flac", (), True),
    Format("mp3", (".mp3",), "mp3", "libmp3lame", "audio/mpeg", True, "mp3", MP3_RATES, True,
           joins="bytes"),
    Format("aac", (".aac",), "adts", "aac", "audio/aac", True, "aac", AAC_RATES, joins="bytes"),
    Format("m4a", (".m4a",), "ipod", "aac", "audio/mp4", False, "", AAC_RATES),
    Format("caf", (".caf",), "caf", "libopus", "audio/x-caf", False, "", OPUS_RATES,
           joins="packets"),
)  # fmt: skip
FILE_FORMATS: dict[str, Format] = {f.name: f for f in _ALL}
"""Formats a voice note or `say` output file can have, by msgvoice's name."""

PCM = Format("pcm", (".pcm",), "raw", "pcm_s16le", "audio/pcm", True, "pcm")
"""Bare 16-bit little-endian mono PCM (the speech API's `pcm`, at PCM_RATE)."""
PCM_RATE = 24_000

FORMATS: dict[str, Format] = {**FILE_FORMATS, PCM.name: PCM}
"""Every format by msgvoice's name."""

API_FORMATS: dict[str, Format] = {f.api_name: f for f in (*_ALL, PCM) if f.api_name}
"""The speech API's `response_format` values."""

SUFFIXES: dict[str, str] = {s: f.name for f in _ALL for s in f.suffixes}
"""File suffix → format name (for `say -o hello.opus`)."""

CAF_RATE = 24_000
"""iMessage voice notes: Opus at 24 kHz mono in CAF."""


def output_rate(fmt: str, engine_rate: int, opus_rate_hz: int) -> int:
    """The sample rate a format is written at: the configured Opus rate, 24 kHz for PCM and
    CAF, else the engine's own rate when the codec takes it, else the next one up."""
    if fmt == "ogg":
        return opus_rate_hz
    if fmt == "pcm":
        return PCM_RATE
    if fmt == "caf":
        return CAF_RATE
    rates = FILE_FORMATS[fmt].rates if fmt in FILE_FORMATS else ()
    if not rates or engine_rate in rates:
        return engine_rate
    return min((r for r in rates if r >= engine_rate), default=rates[-1])
