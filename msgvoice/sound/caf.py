"""A Core Audio Format file around Opus packets (what Messages' voice notes carry).

FFmpeg's CAF muxer refuses Opus ("not yet implemented"), so the packets come from PyAV's
libopus encoder and the container is written here, after Apple's CAF specification: a `caff`
header, then `desc` (sample rate, format `opus`, variable bytes per packet, fixed frames per
packet), `chan` (mono), `data` (an edit count, then the packets) and `pakt` (packet count,
valid frames, priming and remainder frames, then each packet's size as a BER integer: 7 bits a
byte, most significant first, the high bit set on all but the last byte). All integers are
big-endian. The layout matches the Opus CAFs that FFmpeg's demuxer and Apple's decoders read.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Protocol

MONO_LAYOUT_TAG = (100 << 16) | 1
"""kAudioChannelLayoutTag_Mono."""


class Writable(Protocol):
    """Where the file goes."""

    def write(self, data: bytes, /) -> int: ...


def ber(value: int) -> bytes:
    """`value` as a CAF packet-table integer."""
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack(">q", len(body)) + body


def write_caf_opus(
    out: Writable,
    packets: Sequence[bytes],
    *,
    rate: int,
    frames_per_packet: int,
    valid_frames: int,
    priming_frames: int,
) -> None:
    """Write a mono Opus CAF: `valid_frames` samples at `rate` after `priming_frames` of
    encoder delay, in packets of `frames_per_packet` frames (the last may be short)."""
    remainder = len(packets) * frames_per_packet - valid_frames - priming_frames
    desc = struct.pack(">d4sIIIII", float(rate), b"opus", 0, 0, frames_per_packet, 1, 0)
    chan = struct.pack(">III", MONO_LAYOUT_TAG, 0, 0)
    pakt = struct.pack(">qqii", len(packets), valid_frames, priming_frames, max(0, remainder))
    out.write(b"caff" + struct.pack(">HH", 1, 0))
    out.write(_chunk(b"desc", desc))
    out.write(_chunk(b"chan", chan))
    out.write(_chunk(b"data", struct.pack(">I", 0) + b"".join(packets)))
    out.write(_chunk(b"pakt", pakt + b"".join(ber(len(p)) for p in packets)))
