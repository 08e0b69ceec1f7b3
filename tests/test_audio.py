"""Audio: normalisation of engine output, clean joins, trimming, encoding in every format."""

from __future__ import annotations

import io
import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from msgvoice.sound import audio
from msgvoice.sound.encoder import AudioError
from msgvoice.sound.files import AudioWriter
from msgvoice.speech.convert import decode, describe
from msgvoice.speech.formats import output_rate
from msgvoice.worker.engines.espeak import EspeakEngine
from msgvoice.worker.protocol import Prosody, from_raw, to_raw
from msgvoice.worker.samples import SampleError, to_float32
from tests.conftest import pitch_hz, rms

RATE = 22_050


def tone(seconds: float, freq: float = 220.0, amp: float = 0.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_int16_range_floats_are_rescaled_not_clipped() -> None:
    """A float array in int16 range (torchaudio 2.10) keeps its shape after scaling."""
    loud = tone(0.1, amp=0.5) * 32767
    out = to_float32(loud)
    assert out.dtype == np.float32 and float(np.abs(out).max()) <= 1.0
    assert np.allclose(out, tone(0.1, amp=0.5), atol=1e-4)


def test_slightly_hot_float_is_scaled_down_not_mistaken_for_pcm() -> None:
    """A float array peaking at 1.25 keeps its level (scaled to peak 1), not divided by 32768."""
    out = to_float32(tone(0.1, amp=1.25))
    assert float(np.abs(out).max()) == pytest.approx(1.0, abs=1e-3)


def test_integer_pcm_and_stereo_become_mono_float() -> None:
    """int16 PCM is scaled by its range (every one of its values to exactly value / 32768);
    (n, 2) stereo is averaged to mono."""
    pcm = (tone(0.1) * 32767).astype(np.int16)
    assert np.allclose(to_float32(pcm), tone(0.1), atol=1e-4)
    every = np.arange(-32768, 32768, dtype=np.int16)
    assert np.array_equal(to_float32(every), (every / 32768).astype(np.float32))
    stereo = np.stack([tone(0.1), tone(0.1)], axis=1)
    assert to_float32(stereo).shape == (int(RATE * 0.1),)


def test_the_protocol_carries_16_bit_pcm_as_it_is_and_the_rest_as_float32() -> None:
    """An engine's mono int16 crosses the pipe as its own 2 bytes a sample; float, wider
    integers and stereo as float32. Either way the daemon's shaping sees what `to_float32`
    makes of the engine's samples, to the bit."""
    every = np.arange(-32768, 32768, dtype=np.int16)
    for spoken, kind in [
        (every, "s16"),
        (tone(0.1), "f32"),
        (every.astype(np.int32) * 65536, "f32"),
        (np.stack([every, every], axis=1), "f32"),
    ]:
        raw, sample_format = to_raw(spoken)
        assert sample_format == kind and len(raw) == (2 if kind == "s16" else 4) * (
            spoken.size // spoken.ndim
        )
        assert np.array_equal(to_float32(from_raw(raw, sample_format)), to_float32(spoken))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_rejected(bad: float) -> None:
    """NaN or inf from an engine is an error, not noise in a voice note."""
    x = tone(0.1)
    x[10] = bad
    with pytest.raises(SampleError, match="NaN or infinite"):
        to_float32(x)


def test_joins_do_not_click() -> None:
    """Segments that start and end mid-wave join with no jump bigger than inside the audio."""
    shaping = audio.Shaping(fade_ms=8, gap_ms=100, silence_db=-50)
    a, b = tone(0.3, 220, 0.8), tone(0.3, 330, 0.8)[17:]  # b starts near its peak
    joined = np.concatenate(
        [
            audio.shape_segment(a, RATE, shaping),
            audio.gap(RATE, shaping),
            audio.shape_segment(b, RATE, shaping),
        ]
    )
    inner = max(audio.max_jump(a), audio.max_jump(b))
    naive = audio.max_jump(np.concatenate([a, b]))
    assert audio.max_jump(joined) <= inner * 1.01
    assert naive > inner * 2  # the naive join would click


def test_click_ratio_tells_a_clicky_join_from_a_faded_one() -> None:
    """The click measure is at most 1 for faded joins and well above for a hard cut."""
    shaping = audio.Shaping(fade_ms=8, gap_ms=100, silence_db=-50)
    a, b = tone(0.3, 220, 0.8), tone(0.3, 330, 0.8)[17:]
    faded = np.concatenate(
        [
            audio.shape_segment(a, RATE, shaping),
            audio.gap(RATE, shaping),
            audio.shape_segment(b, RATE, shaping),
        ]
    )
    hard = np.concatenate([a, np.zeros(int(RATE * 0.1), np.float32), b])
    assert audio.click_ratio(faded, RATE) <= 1.0
    assert audio.click_ratio(hard, RATE) > 2.0


@pytest.mark.parametrize(("out_rate", "factor"), [(RATE, 1.0), (48_000, 1.0), (48_000, 1.5)])
def test_a_segment_shaped_piece_by_piece_is_the_segment_shaped_whole(
    out_rate: int, factor: float
) -> None:
    """Fed in pieces cut anywhere (empty ones, single samples, silence before, between and
    after), `Pieces` gives exactly the samples of the whole segment trimmed, faded, stretched
    and resampled in one go (`shape_segment`, `stretch`, `resample`), to the last bit."""
    rng = np.random.default_rng(7)
    quiet = np.zeros(3000, np.float32)
    segments = [
        np.concatenate([quiet, tone(0.6), quiet, tone(0.3, 330), quiet]),
        np.concatenate([tone(0.6), quiet, tone(0.3, 330)]),  # loud at both ends
        tone(0.004),  # shorter than two fades
        quiet,
        (rng.standard_normal(9) * 0.3).astype(np.float32),
    ]
    for x, shaping in itertools.product(segments, [audio.Shaping(), audio.Shaping(0.0, 80, -40)]):
        shaped = audio.stretch(audio.shape_segment(x, RATE, shaping), RATE, factor)
        whole = audio.resample(shaped, RATE, out_rate)
        assert np.array_equal(audio.piece(x, RATE, out_rate, shaping, factor), whole)
        for _ in range(6):
            cuts = np.sort(rng.integers(0, x.size + 1, size=rng.integers(0, 9)))
            pieces = audio.Pieces(RATE, out_rate, shaping, factor)
            given = [pieces.feed(part) for part in np.split(x, cuts)] + [pieces.finish()]
            assert np.array_equal(np.concatenate(given), whole)


def test_trailing_and_leading_silence_is_trimmed() -> None:
    """Silence around speech is cut down to a short margin."""
    x = np.concatenate([np.zeros(RATE), tone(0.5), np.zeros(RATE)])
    out = audio.trim_silence(x, RATE, -50, keep_ms=30)
    assert abs(len(out) / RATE - (0.5 + 0.06)) < 0.01
    assert audio.trim_silence(np.zeros(100, np.float32), RATE, -50).size == 0


@pytest.mark.parametrize(
    ("fmt", "container", "codec", "rate"),
    [
        ("wav", "wav", "pcm_s16le", RATE),
        ("flac", "flac", "flac", RATE),
        ("ogg", "ogg", "opus", 48_000),
        ("mp3", "mp3", "mp3float", RATE),
        ("aac", "aac", "aac", RATE),
        ("m4a", "mov,mp4,m4a,3gp,3g2,mj2", "aac", RATE),
        ("caf", "caf", "opus", 48_000),
    ],
)
def test_every_format_decodes_with_its_duration(
    tmp_path: Path, fmt: str, container: str, codec: str, rate: int
) -> None:
    """Written files carry the right container, codec, rate and duration, and real sound, as
    FFmpeg's demuxers read them (and libsndfile too, where it reads the format)."""
    out_rate = output_rate(fmt, RATE, 48_000)
    path = tmp_path / f"x.{fmt}"
    with AudioWriter(path, fmt, out_rate) as writer:
        for piece in np.array_split(audio.resample(tone(1.0), RATE, out_rate), 7):
            writer.feed(piece)
        writer.commit()
    assert describe(path) == (container, codec, rate)
    data, decoded_rate = decode(path)
    assert abs(len(data) / decoded_rate - 1.0) < 0.07
    assert rms(data) > 0.2
    if fmt in ("wav", "flac", "ogg", "mp3"):
        independent, sf_rate = sf.read(str(path), dtype="float32")
        assert abs(len(independent) / sf_rate - 1.0) < 0.07 and rms(independent) > 0.2


def test_caf_opus_is_a_24_khz_voice_note_that_decodes_to_its_source(tmp_path: Path) -> None:
    """The CAF writer's packets, packet table and priming decode back (through FFmpeg's own
    CAF demuxer and Opus decoder) to the source: same length within a packet, same signal."""
    rng = np.random.default_rng(1)
    noise = (0.2 * rng.standard_normal(48_000)).astype(np.float32)
    source = audio.resample(audio.resample(noise, 24_000, 8_000), 8_000, 24_000)  # speech band
    path = tmp_path / "x.caf"
    with AudioWriter(path, "caf", 24_000) as writer:
        writer.feed(source)
        writer.commit()
    raw = path.read_bytes()
    assert raw[:4] == b"caff" and b"desc" in raw and b"pakt" in raw
    desc = raw.index(b"desc") + 12
    rate, fmt_id, _, _, frames_per_packet, channels, _ = struct.unpack(
        ">d4sIIIII", raw[desc : desc + 32]
    )
    assert (rate, fmt_id, frames_per_packet, channels) == (24_000.0, b"opus", 480, 1)
    pakt = raw.index(b"pakt") + 12
    packets, valid, priming, _ = struct.unpack(">qqii", raw[pakt : pakt + 24])
    assert valid == source.size and packets * 480 >= valid + priming
    decoded, decoded_rate = decode(path)
    back = audio.resample(decoded, decoded_rate, 24_000)
    assert abs(back.size - source.size) <= 480
    # FFmpeg trims the priming in its decoder's 48 kHz units, Apple's decoders in the file's
    # 24 kHz frames (CAF's rule), so what is left of the encoder's delay is at most `priming`.
    middle = source[4800:-4800]
    lag = max(
        range(481), key=lambda k: float(np.dot(back[4800 + k : 4800 + k + middle.size], middle))
    )
    assert 0 <= lag <= priming
    aligned = back[4800 + lag : 4800 + lag + middle.size]
    assert float(np.corrcoef(aligned, middle)[0, 1]) > 0.95


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    """An error mid-write removes the partial file; nothing appears at the path."""
    path = tmp_path / "x.ogg"
    with pytest.raises(RuntimeError), AudioWriter(path, "ogg", 48_000) as writer:
        writer.feed(tone(0.5, rate=48_000))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    """Only the formats in the table are written."""
    with pytest.raises(AudioError, match="unknown format"):
        AudioWriter(tmp_path / "x.wma", "wma", 44_100)


@pytest.fixture(scope="module")
def flat_speech() -> tuple[np.ndarray, int]:
    """Real eSpeak speech with a flat intonation (one F0 throughout), made once: eSpeak is one
    library per process, and a worker makes one engine, never several."""
    samples, rate = EspeakEngine("cmn").synthesize(
        "今天天气很好，我们一起去公园散步吧。", None, Prosody(range=0.0), None
    )
    return to_float32(samples), rate


@pytest.mark.parametrize("factor", [4.0, 2.0, 0.5, 0.25])
def test_stretch_keeps_the_pitch_and_makes_the_length_exact(
    flat_speech: tuple[np.ndarray, int], factor: float
) -> None:
    """WSOLA on speech with one F0: exactly round(len × factor) samples, the same F0 (±2 %),
    and no join sharper than the speech."""
    x, rate = flat_speech
    y = audio.stretch(x, rate, factor)
    assert y.size == round(x.size * factor) and y.dtype == np.float32
    assert pitch_hz(y, rate) == pytest.approx(pitch_hz(x, rate), rel=0.02)
    assert audio.max_jump(y) <= audio.max_jump(x) * 1.05


@pytest.mark.parametrize("fmt", ["ogg", "mp3", "wav", "pcm"])
def test_a_worker_finishes_a_one_segment_job_as_the_daemon_would_encode_it(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked for a job's output, the worker answers with the finished bytes, encoded piece by
    piece as eSpeak speaks a long sentence (shaped by the worker, then, once made ready, by
    eSpeak's child as it speaks), which decode to the daemon's own encode of the same samples
    in one piece (same shaping, rate and settings); a worker that cannot encode here sends
    the samples instead."""
    from msgvoice.sound.encoder import EncodeSettings, encode_whole  # noqa: PLC0415
    from msgvoice.speech.formats import FORMATS  # noqa: PLC0415
    from msgvoice.worker import main, output  # noqa: PLC0415

    engine = EspeakEngine("cmn")
    wanted = {
        "format": fmt, "streaming": False, "opus_rate_hz": 48_000, "opus_complexity": 0,
        "opus_bitrate_kbps": 64, "fade_ms": 8.0, "gap_ms": 180.0, "silence_db": -50.0,
        "stretch": 1.0,
    }  # fmt: skip
    text = "那真是太好了！保持这种好心情，今天注定会是个充满阳光的日子。"
    params = {"text": text, "voice": None, "prosody": {}, "emotion": None, "seed": None}
    pieces, _rate = engine.stream(text, None, Prosody(), None)
    assert len(list(pieces)) > 5
    made, data = main.synthesize(engine, {**params, "output": wanted}, False)
    engine.prepare()  # the next child is made ready to shape for this output as it speaks
    again, theirs = main.synthesize(engine, {**params, "output": wanted}, False)
    assert again["samples"] == made["samples"] and again["output"] == made["output"] | {
        "encode_s": again["output"]["encode_s"]
    }
    rate = output_rate(fmt, engine.sample_rate, 48_000)
    assert made["output"]["rate"] == rate and made["output"]["frames"] > 0
    spoken, raw = main.synthesize(engine, params, False)
    assert spoken["sample_format"] == "s16"  # eSpeak's own 16-bit PCM, half the bytes
    samples = to_float32(from_raw(raw, "s16"))
    piece = audio.piece(samples, engine.sample_rate, rate, audio.Shaping(), 1.0)
    ours = encode_whole(FORMATS[fmt], rate, piece, False, EncodeSettings())
    for worker in (data, theirs):
        if fmt == "pcm":
            assert worker == ours
            continue
        # an Ogg stream's serial number is random: compare what they decode to
        (tmp_path / f"w.{fmt}").write_bytes(worker)
        (tmp_path / f"d.{fmt}").write_bytes(ours)
        got, want = decode(tmp_path / f"w.{fmt}"), decode(tmp_path / f"d.{fmt}")
        assert got[1] == want[1] and np.array_equal(got[0], want[0])
    assert "output" not in spoken and spoken["samples"] == samples.size

    monkeypatch.setattr(output, "available", lambda: False)
    plain, payload = main.synthesize(engine, {**params, "output": wanted}, False)
    assert "output" not in plain and len(payload) == 2 * plain["samples"]


def sounds(samples: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """(start, end) seconds of each stretch louder than -30 dBFS (10 ms windows)."""
    step = rate // 100
    tens = samples[: samples.size // step * step].reshape(-1, step)
    loud = np.concatenate([[0], np.sqrt(np.mean(tens**2, axis=1)) > 0.03, [0]])
    edges = np.flatnonzero(np.diff(loud.astype(np.int8))) / 100
    return list(zip(edges[::2], edges[1::2], strict=True))


@pytest.mark.parametrize(("fmt", "rate"), [("ogg", 48_000), ("caf", 24_000)])
def test_opus_segments_encoded_apart_are_put_into_one_stream(
    tmp_path: Path, fmt: str, rate: int
) -> None:
    """Two segments encoded apart as bare Opus packets (a joined job's, each by the worker
    that spoke it; the second after the gap less the encoder's priming) are put into one Ogg
    or CAF stream. It decodes to the two sounds, as long as they were, with the pause between
    them as long as the gap, give or take a packet (20 ms); the stream is as long as the
    joining encoder says (the Ogg's last granule, the CAF's valid frames), to the sample."""
    from msgvoice.sound.encoder import Encoder, EncodeSettings, encode_all, priming  # noqa: PLC0415
    from msgvoice.speech.formats import FORMATS  # noqa: PLC0415

    settings, opus = EncodeSettings(), FORMATS[fmt]
    first, second = tone(1.0, 220, rate=rate), tone(0.5, 330, rate=rate)
    gap = np.zeros(int(rate * 0.18) - priming(opus, rate), dtype=np.float32)
    made = [
        encode_all(opus, rate, [first], True, settings, packets=True),
        encode_all(opus, rate, [gap, second], True, settings, follows=True, packets=True),
    ]
    joining = Encoder(opus, rate, streaming=fmt == "ogg")
    data = joining.start() + b"".join(joining.join(part) for part in made) + joining.finish()
    path = tmp_path / f"joined.{fmt}"
    path.write_bytes(data)
    heard, heard_rate = decode(path)
    (a0, a1), (b0, b1) = sounds(heard, heard_rate)
    assert a1 - a0 == pytest.approx(1.0, abs=0.02) and b1 - b0 == pytest.approx(0.5, abs=0.02)
    assert 0.17 <= b0 - a1 <= 0.18 + 0.02 + 0.01
    # The first segment's last packet plays whole: its padding is part of the pause.
    frame, lead = rate // 50, priming(opus, rate)
    played = -(-(first.size + lead) // frame) * frame - lead
    assert joining.frames == played + lead + gap.size + second.size
    if fmt == "ogg":
        assert sf.info(str(path)).frames == joining.frames == heard.size
    else:
        pakt = data.index(b"pakt") + 12
        assert struct.unpack(">qqii", data[pakt : pakt + 24])[1] == joining.frames


@pytest.mark.parametrize(("fmt", "rate"), [("mp3", 22_050), ("mp3", 24_000), ("aac", 22_050)])
def test_a_stream_plays_its_encoders_priming_before_the_first_sample(fmt: str, rate: int) -> None:
    """A click fed first to a new mp3 or aac stream is heard `priming` samples in: the silence
    a joined segment's gap is shortened by."""
    import av  # noqa: PLC0415

    from msgvoice.sound.encoder import Encoder, priming  # noqa: PLC0415
    from msgvoice.speech.formats import FORMATS  # noqa: PLC0415

    click = np.zeros(rate // 4, dtype=np.float32)
    click[0] = 0.9
    encoder = Encoder(FORMATS[fmt], rate, streaming=True)
    data = encoder.start() + encoder.feed(click) + encoder.finish()
    with av.open(io.BytesIO(data), format=FORMATS[fmt].container) as container:
        heard = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert int(np.argmax(np.abs(heard))) == priming(FORMATS[fmt], rate) > 0


@pytest.mark.parametrize(("fmt", "rate"), [("mp3", 24_000), ("ogg", 48_000)])
async def test_the_daemon_finishes_a_segment_its_worker_sent_raw_as_the_worker_would(
    fmt: str, rate: int
) -> None:
    """A joined job's segment whose worker could not encode it (no PyAV there) is finished in
    the daemon to the same bytes: gap, rate, shaping and all (Opus: the same bare packets)."""
    from msgvoice.speech.sinks import Turns  # noqa: PLC0415
    from msgvoice.speech.synthesis import Synthesis  # noqa: PLC0415
    from msgvoice.worker import main  # noqa: PLC0415

    engine = EspeakEngine("cmn")
    wanted = {
        "format": fmt, "streaming": True, "opus_rate_hz": 48_000, "opus_complexity": 0,
        "opus_bitrate_kbps": 64, "fade_ms": 8.0, "gap_ms": 180.0, "silence_db": -50.0,
        "stretch": 1.25, "rate": rate, "follows": True, "packets": fmt == "ogg",
    }  # fmt: skip
    params = {"text": "晚上好。", "voice": None, "prosody": {}, "emotion": None, "seed": None}
    theirs, data = main.synthesize(engine, {**params, "output": wanted}, False)
    spoken, raw = main.synthesize(engine, params, False)
    sent = Synthesis(from_raw(raw, spoken["sample_format"]), spoken["sample_rate"], 0.0, 0.0, 1)
    ours = (await Turns().finish(sent, wanted)).output  # type: ignore[arg-type]
    assert ours is not None and ours.data == data and data[:3] not in (b"ID3", b"Ogg")
    made = theirs["output"]
    assert (ours.rate, ours.frames, ours.packets) == (rate, made["frames"], made["packets"])
    assert ours.packets == (fmt == "ogg")
