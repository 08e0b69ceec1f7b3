"""Emotion vectors: safety, smoothing, lexicon, policy, and prosody you can hear on eSpeak."""

from __future__ import annotations

import numpy as np
import pytest

from msgvoice.config import EmotionConfig
from msgvoice.speech.emotion import (
    NEUTRAL,
    SUM_MAX,
    VALUE_MAX,
    Emotions,
    average,
    dominant,
    from_lexicon,
    safe,
    smooth,
    to_prosody,
    vec,
)
from msgvoice.worker.engines.espeak import EspeakEngine
from msgvoice.worker.protocol import Prosody
from msgvoice.worker.samples import to_float32
from tests.conftest import pitch_hz, rms


def test_safety_clamps_values_and_the_sum() -> None:
    """Each value ends in [0, 0.7], NaN becomes 0, and the sum is at most 0.8."""
    v = safe([2.0, -1.0, float("nan"), 0.5, 0, 0, 0, 0])
    assert all(0 <= x <= VALUE_MAX for x in v) and v[1] == 0 and v[2] == 0
    assert sum(v) == pytest.approx(SUM_MAX)
    with pytest.raises(ValueError, match="8 numbers"):
        safe([0.1] * 7)


def test_smoothing_blends_neighbours_and_zero_means_hard_cuts() -> None:
    """With factor 0.7 a sudden change is softened; with 0 it is kept as is."""
    happy, angry = vec(happy=0.6), vec(angry=0.6)
    soft = smooth([happy, angry], 0.7)
    assert soft[1][0] == pytest.approx(0.42) and soft[1][1] == pytest.approx(0.18)
    assert smooth([happy, angry], 0) == [happy, angry]


def test_average_and_dominant() -> None:
    """The average of two vectors is their mean; the dominant is the largest component."""
    mean = average([vec(happy=0.6), vec(sad=0.2)])
    assert mean == pytest.approx(vec(happy=0.3, sad=0.1))
    assert dominant(vec(angry=0.5, sad=0.1)) == ("angry", 0.5)


@pytest.mark.parametrize(
    ("style", "emotion"),
    [
        ("开心", "happy"),
        ("高兴", "happy"),
        ("生气", "angry"),
        ("愤怒", "angry"),
        ("难过", "sad"),
        ("伤心", "sad"),
        ("害怕", "afraid"),
        ("惊讶", "surprised"),
        ("厌恶", "disgusted"),
        ("低落", "melancholic"),
        ("忧郁", "melancholic"),
        ("温柔", "calm"),
        ("平静", "calm"),
        ("excited", "happy"),
        ("Angry", "angry"),
        ("sad", "sad"),
        ("用很生气的语气", "angry"),
    ],
)
def test_lexicon_reads_common_style_words(style: str, emotion: str) -> None:
    """Common Chinese and English style words map to their emotion without any LLM."""
    v = from_lexicon(style)
    assert v is not None and dominant(v)[0] == emotion


def test_intensifiers_scale_and_unknown_styles_give_nothing() -> None:
    """非常 strengthens, 有点 weakens; a style with no known word is left to neutral."""
    base = from_lexicon("生气")
    strong, weak = from_lexicon("非常生气"), from_lexicon("有点生气")
    assert base and strong and weak
    assert weak[1] < base[1] < strong[1]
    assert from_lexicon("像海盗一样") is None


async def test_policy_per_segment_for_short_text_average_for_long() -> None:
    """Few short segments keep their own vectors; many get the one average vector."""

    async def analyse(style: str | None, segments: object) -> list[tuple[float, ...]]:
        return [vec(happy=0.6), vec(sad=0.6), vec(angry=0.6)][: len(segments)]  # type: ignore  # a list of Vectors

    emotions = Emotions(EmotionConfig(smooth_factor=0, max_segments=2), analyse)  # type: ignore  # a plain async fn
    short = await emotions.resolve(None, ["一。", "二。"])
    assert short.source == "llm" and short.vectors[0] != short.vectors[1]
    long = await emotions.resolve(None, ["一。", "二。", "三。"])
    assert long.vectors == [long.vector] * 3


async def test_source_order_fixed_then_lexicon_then_neutral() -> None:
    """A fixed vector wins; else style words; else neutral."""
    fixed = Emotions(EmotionConfig(fixed_vector=(0, 0, 0.5, 0, 0, 0, 0, 0)))
    assert (await fixed.resolve("开心", ["好"])).source == "fixed"
    plain = Emotions(EmotionConfig())
    assert (await plain.resolve("开心", ["好"])).source == "lexicon"
    result = await plain.resolve(None, ["好"])
    assert result.source == "neutral" and result.vector == NEUTRAL


def test_neutral_maps_to_the_plain_voice() -> None:
    """The neutral vector changes nothing about delivery."""
    assert to_prosody(NEUTRAL) == Prosody()


@pytest.fixture(scope="module")
def espeak() -> EspeakEngine:
    return EspeakEngine("cmn")


def speak(engine: EspeakEngine, style: str | None) -> tuple[np.ndarray, int]:
    v = from_lexicon(style) if style else NEUTRAL
    assert v is not None
    samples, rate = engine.synthesize("你怎么又迟到了，我们都等你半天了。", None, to_prosody(v), v)
    return to_float32(samples), rate


def test_angry_is_faster_and_louder_than_sad_on_real_audio(espeak: EspeakEngine) -> None:
    """Measured on eSpeak output: angry is shorter and louder than neutral, sad longer and
    quieter; happy is higher than sad."""
    angry, rate = speak(espeak, "生气")
    neutral, _ = speak(espeak, None)
    sad, _ = speak(espeak, "难过")
    happy, _ = speak(espeak, "开心")
    assert len(angry) < 0.85 * len(neutral) < 0.85 * 0.85 * len(sad)
    assert rms(angry) > 1.1 * rms(neutral) > 1.1 * 1.1 * rms(sad)
    assert pitch_hz(happy, rate) > 1.15 * pitch_hz(sad, rate) > 0


def same_delivery(a: np.ndarray, b: np.ndarray, rate: int) -> bool:
    """Equal to within eSpeak's own call-to-call flutter (it keeps a pitch-flutter clock)."""
    return (
        abs(len(a) - len(b)) < 0.01 * len(a)
        and abs(rms(a) - rms(b)) < 0.02 * rms(a)
        and abs(pitch_hz(a, rate) - pitch_hz(b, rate)) < 0.03 * pitch_hz(a, rate)
    )


def test_neutral_audio_equals_the_plain_voice(espeak: EspeakEngine) -> None:
    """Neutral emotion sounds like the undecorated engine call: same length, level, pitch."""
    neutral, rate = speak(espeak, None)
    plain, _ = espeak.synthesize("你怎么又迟到了，我们都等你半天了。", None, Prosody(), None)
    assert same_delivery(neutral, to_float32(plain), rate)


def test_parameters_do_not_stick_between_calls(espeak: EspeakEngine) -> None:
    """After a fast, high, loud call the next plain call sounds plain again."""
    text = "你怎么又迟到了，我们都等你半天了。"
    first, rate = espeak.synthesize(text, None, Prosody(), None)
    loud, _ = espeak.synthesize(text, None, Prosody(rate=2, pitch=1.8, volume=1.8), None)
    again, _ = espeak.synthesize(text, None, Prosody(), None)
    first, loud, again = to_float32(first), to_float32(loud), to_float32(again)
    assert not same_delivery(first, loud, rate)
    assert same_delivery(first, again, rate)
