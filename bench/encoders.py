"""Each encoder on 30 s of speech: time, size and quality."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import (
    TEXTS,
    median,
)
from msgvoice.sound.audio import resample
from msgvoice.sound.encoder import Encoder, EncodeSettings
from msgvoice.speech.convert import decode
from msgvoice.speech.formats import FILE_FORMATS
from msgvoice.worker.engines.espeak import EspeakEngine
from msgvoice.worker.protocol import Prosody, to_float32


def _speech_30s(engine: EspeakEngine) -> tuple[Any, int]:
    """30 s of eSpeak Mandarin speech."""
    samples, rate = engine.synthesize(TEXTS["300ch"], None, Prosody(), None)
    return to_float32(samples)[: 30 * rate], rate


def _quality(reference: Any, rate: int, data: bytes, tmp: Path) -> tuple[str, float]:
    """PESQ-WB of the decoded bytes against the reference (else a log-spectral distance)."""
    import numpy as np  # noqa: PLC0415

    path = tmp / "quality.ogg"
    path.write_bytes(data)
    decoded, decoded_rate = decode(path)
    ref, deg = resample(reference, rate, 16_000), resample(decoded, decoded_rate, 16_000)
    n = min(ref.size, deg.size)
    try:
        from pesq import pesq  # noqa: PLC0415

        return "PESQ-WB", float(pesq(16_000, ref[:n], deg[:n], "wb"))
    except ImportError:
        spectra = [
            np.abs(np.fft.rfft(x[: n - n % 512].reshape(-1, 512), axis=1)) + 1e-6
            for x in (ref, deg)
        ]
        lsd = np.sqrt(np.mean((20 * np.log10(spectra[0] / spectra[1])) ** 2, axis=1)).mean()
        return "LSD dB (lower is better)", float(lsd)


def bench_encoders(runs: int, tmp: Path) -> dict[str, dict[str, float]]:
    """The same 30 s of speech through libsndfile's Opus (the old path) and libopus (PyAV)."""
    import io  # noqa: PLC0415

    import soundfile as sf  # noqa: PLC0415

    speech, rate = _speech_30s(EspeakEngine("cmn"))
    x48 = resample(speech, rate, 48_000)

    def libsndfile() -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, x48, 48_000, format="OGG", subtype="OPUS")
        return buffer.getvalue()

    def libopus(complexity: int) -> bytes:
        encoder = Encoder(FILE_FORMATS["ogg"], 48_000, False, EncodeSettings(complexity, 64))
        return encoder.start() + encoder.feed(x48) + encoder.finish()

    candidates = {"soundfile (old)": libsndfile}
    candidates |= {f"libopus c{c}": (lambda c=c: libopus(c)) for c in (0, 5, 10)}
    rows: dict[str, dict[str, float]] = {}
    for name, encode in candidates.items():
        times = []
        for _ in range(max(runs, 5)):
            started = time.perf_counter()
            data = encode()
            times.append(time.perf_counter() - started)
        measure, score = _quality(speech, rate, data, tmp)
        rows[name] = {"encode_ms": median(times) * 1000, "kbps": len(data) * 8 / 30 / 1000}
        rows[name]["quality"] = score
    old = rows["soundfile (old)"]
    print(f"\n== OGG/Opus encoders: the same 30 s of eSpeak speech at 48 kHz ({measure}) ==")
    print(f"{'encoder':16} {'ms':>7} {'speed-up':>8} {'kbit/s':>7} {'size':>6} {'quality':>8}")
    for name, r in rows.items():
        print(
            f"{name:16} {r['encode_ms']:7.1f} {old['encode_ms'] / r['encode_ms']:7.1f}x "
            f"{r['kbps']:7.1f} {r['kbps'] / old['kbps']:5.2f}x {r['quality']:8.2f}"
        )
    return rows
