"""Emotion vectors: safety, smoothing, the built-in lexicon, the prosody mapping, the policy.

A vector is 8 numbers in IndexTTS2's order: happy, angry, sad, afraid, disgusted, melancholic,
surprised, calm. Sources, in order: a fixed vector from config, the LLM analyser (when
configured and answering), the lexicon (style words), neutral.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from msgvoice.config import EmotionConfig
from msgvoice.worker.protocol import Prosody

log = logging.getLogger(__name__)

NAMES = ("happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm")
Vector = tuple[float, float, float, float, float, float, float, float]
VALUE_MAX = 0.7
SUM_MAX = 0.8
NEUTRAL: Vector = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5)


def vec(**values: float) -> Vector:
    """A vector from named components, e.g. `vec(happy=0.6)`."""
    unknown = set(values) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown emotion {sorted(unknown)}")
    return tuple(values.get(n, 0.0) for n in NAMES)  # type: ignore[return-value]  # 8 by NAMES


def safe(values: Sequence[float]) -> Vector:
    """Clamp each value to [0, 0.7] (NaN → 0) and scale the sum down to at most 0.8."""
    if len(values) != len(NAMES):
        raise ValueError(f"an emotion vector has {len(NAMES)} numbers, got {len(values)}")
    clamped = [min(max(v, 0.0), VALUE_MAX) if math.isfinite(v) else 0.0 for v in values]
    total = sum(clamped)
    if total > SUM_MAX:
        clamped = [v * SUM_MAX / total for v in clamped]
    return tuple(clamped)  # type: ignore[return-value]  # checked: len(NAMES) items


def smooth(vectors: Sequence[Vector], factor: float) -> list[Vector]:
    """Blend each segment's vector with the (smoothed) one before it; factor 0 = hard cuts."""
    out: list[Vector] = []
    for current in vectors:
        if out and factor > 0:
            blend = zip(out[-1], current, strict=True)
            current = safe([factor * p + (1 - factor) * c for p, c in blend])  # noqa: PLW2901
        out.append(current)
    return out


def average(vectors: Sequence[Vector]) -> Vector:
    """Component-wise mean, made safe."""
    if not vectors:
        return NEUTRAL
    return safe([sum(col) / len(vectors) for col in zip(*vectors, strict=True)])


def dominant(v: Vector) -> tuple[str, float]:
    """The strongest emotion and its value."""
    i = max(range(len(NAMES)), key=lambda k: v[k])
    return NAMES[i], v[i]


# -- lexicon ---------------------------------------------------------------------------------

_BASE = 0.55
LEXICON: dict[str, Vector] = {}
for _words, _v in [
    ("开心 高兴 快乐 愉快 欢快 喜悦 活泼 happy cheerful joyful glad", vec(happy=_BASE)),
    ("兴奋 激动 excited", vec(happy=0.45, surprised=0.25)),
    ("撒娇 可爱 俏皮 cute playful", vec(happy=0.4, calm=0.15, surprised=0.1)),
    ("生气 愤怒 恼火 暴躁 气愤 发火 angry mad furious annoyed", vec(angry=_BASE)),
    ("不耐烦 impatient", vec(angry=0.35, disgusted=0.1)),
    ("难过 伤心 悲伤 哭 sad unhappy crying", vec(sad=_BASE)),
    ("委屈 hurt", vec(sad=0.4, melancholic=0.2)),
    ("害怕 恐惧 惊恐 scared afraid fearful", vec(afraid=_BASE)),
    ("紧张 担心 焦虑 nervous worried anxious", vec(afraid=0.35, sad=0.1)),
    ("厌恶 恶心 嫌弃 鄙视 disgusted disgust", vec(disgusted=_BASE)),
    ("低落 忧郁 忧伤 惆怅 沮丧 失落 melancholic depressed gloomy", vec(melancholic=_BASE)),
    ("疲惫 累 tired weary", vec(melancholic=0.35, calm=0.25)),
    ("惊讶 吃惊 震惊 surprised amazed shocked", vec(surprised=_BASE)),
    ("惊喜", vec(surprised=0.35, happy=0.35)),
    ("温柔 轻柔 柔和 gentle soft tender", vec(calm=0.55, happy=0.15)),
    ("平静 冷静 淡定 安静 舒缓 calm peaceful soothing", vec(calm=0.65)),
]:
    for _w in _words.split():
        LEXICON[_w] = _v

INTENSIFIERS: dict[str, float] = {
    "非常": 1.3,
    "特别": 1.3,
    "超级": 1.3,
    "十分": 1.3,
    "极其": 1.3,
    "很": 1.2,
    "好": 1.1,
    "very": 1.3,
    "really": 1.2,
    "extremely": 1.3,
    "super": 1.3,
    "有点": 0.6,
    "有些": 0.6,
    "稍微": 0.5,
    "略": 0.6,
    "一点": 0.6,
    "slightly": 0.5,
    "a bit": 0.6,
    "a little": 0.6,
    "somewhat": 0.6,
}


def from_lexicon(style: str) -> Vector | None:
    """The vector for a style description from the built-in words, or None if none match."""
    lowered = style.lower()
    hits = [v for w, v in LEXICON.items() if w in lowered]
    if not hits:
        return None
    total = [sum(col) for col in zip(*hits, strict=True)]
    scale = max((f for w, f in INTENSIFIERS.items() if w in lowered and f > 1), default=1.0)
    scale *= min((f for w, f in INTENSIFIERS.items() if w in lowered and f < 1), default=1.0)
    return safe([x * scale for x in total])


# -- prosody ---------------------------------------------------------------------------------


def to_prosody(v: Vector) -> Prosody:
    """Map a vector to delivery for engines without emotion inputs; NEUTRAL → the plain voice.

    Arousal (happy, angry, surprised, afraid up; sad, melancholic down) drives rate; happiness
    and surprise raise pitch and range, sadness lowers them; anger is loud, sadness quiet; calm
    beyond neutral slows and softens.
    """
    h, a, s, f, d, m, su, c = v
    calm = max(0.0, c - NEUTRAL[7])
    arousal = 0.8 * h + 1.0 * a + 0.5 * f + 0.7 * su + 0.2 * d - 0.7 * s - 0.8 * m - 0.5 * calm
    return Prosody(
        rate=1.0 + 0.55 * arousal,
        pitch=1.0 + 0.6 * (h + 1.2 * su + 0.6 * f - 0.5 * s - 0.6 * m - 0.3 * d - 0.2 * calm),
        range=1.0 + 0.8 * (h + su + 0.5 * a - 0.5 * s - 0.7 * m - 0.5 * calm),
        volume=1.0 + 0.6 * (a + 0.4 * h + 0.3 * su - 0.4 * s - 0.4 * m - 0.2 * f - 0.3 * calm),
    )


# -- resolution ------------------------------------------------------------------------------

Analyse = Callable[[str | None, Sequence[str]], Awaitable[list[Vector] | None]]
"""An LLM analyser: (style, segments) → one vector per segment, or None when it failed."""


@dataclass(frozen=True)
class EmotionResult:
    """What a job was given: the source and one vector per segment (plus their average)."""

    source: str  # "fixed" | "llm" | "lexicon" | "neutral"
    vectors: list[Vector]
    vector: Vector

    def as_json(self) -> dict[str, object]:
        """The `emotion` object of jobs and `say --json`."""
        return {
            "source": self.source,
            "vector": [round(x, 4) for x in self.vector],
            "vectors": [[round(x, 4) for x in v] for v in self.vectors],
        }


class Emotions:
    """Resolve a style hint and segments into per-segment vectors by the seeds' policy."""

    def __init__(self, config: EmotionConfig, analyse: Analyse | None = None) -> None:
        self.config = config
        self.analyse = analyse

    def per_segment(self, segments: Sequence[str]) -> bool:
        """Per-segment vectors only for short texts with few segments; else one average."""
        return (
            len(segments) <= self.config.max_segments
            and sum(map(len, segments)) <= self.config.segment_synth_max_chars
        )

    async def resolve(
        self, style: str | None, segments: Sequence[str], vector: Sequence[float] | None = None
    ) -> EmotionResult:
        """Vectors for `segments` (an explicit `vector` wins over everything); never raises
        for an LLM failure (falls back instead)."""
        if vector is not None:
            fixed = safe(vector)
            return EmotionResult("fixed", [fixed] * len(segments), fixed)
        source, raw = await self._raw(style, segments)
        vectors = smooth([safe(v) for v in raw], self.config.smooth_factor)
        mean = average(vectors)
        if not self.per_segment(segments):
            vectors = [mean] * len(segments)
        return EmotionResult(source, vectors, mean)

    async def _raw(self, style: str | None, segments: Sequence[str]) -> tuple[str, list[Vector]]:
        n = len(segments)
        if self.config.fixed_vector:
            return "fixed", [safe(self.config.fixed_vector)] * n
        if self.analyse is not None:
            try:
                found = await self.analyse(style, segments)
            except Exception:  # anything the analyser did not foresee: the lexicon speaks
                log.exception("emotion analyser failed; using the lexicon")
                found = None
            if found is not None:
                return "llm", found
        lexical = from_lexicon(style) if style else None
        if lexical is not None:
            return "lexicon", [lexical] * n
        return "neutral", [NEUTRAL] * n
