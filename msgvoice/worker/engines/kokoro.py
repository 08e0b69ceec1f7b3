"""Kokoro-82M: natural English and Mandarin on a CPU, through the `kokoro` package.

Weights are Kokoro's own layout: `config.json`, one `.pth` (a dict of the bert, bert_encoder,
predictor, text_encoder and decoder state dicts) and `voices/<name>.pt` style packs of shape
(510, 1, 256), one row per phoneme count. They come from `kokoro.model_dir`, or from the
Hugging Face cache of `kokoro.repo_id`; nothing is downloaded here, so no chat reply ever
waits on the network (`hf download hexgrad/Kokoro-82M` fills the cache once).

Text is split into Chinese runs (misaki's Chinese G2P: jieba + pypinyin) and everything else
(misaki's eSpeak English through the espeakng-loader library, so no spaCy model is needed).
Kokoro reads at most 510 phonemes at a time, so longer phoneme strings are cut at spaces.
Emotion reaches it as speed (the model's own duration divisor), pitch (the predicted F0 curve
the decoder's source is driven by, scaled) and loudness.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from msgvoice.worker.engines.devices import cpu_bf16, resolve_device
from msgvoice.worker.protocol import EngineUnavailable, Prosody

RATE = 24_000
LANGUAGES = dict(a="en-us", b="en-gb", e="es", f="fr", h="hi", i="it", j="ja", p="pt-br", z="zh")
"""A Kokoro voice's language, by the first letter of its name (hexgrad/Kokoro-82M VOICES.md)."""
MAX_PHONEMES = 510
"""The model's context (512 positions) less its two boundary tokens."""
SOFT_PHONEMES = 250
"""Sentences are joined into one model call up to this many phonemes."""
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_RUNS = re.compile(r"([\u3400-\u9fff][^A-Za-z]*)|([^\u3400-\u9fff]+)")
_SPEAKABLE = re.compile(r"[A-Za-z0-9]")
HUB_HINT = (
    "put config.json, the .pth and voices/*.pt in kokoro.model_dir, or fetch them once with "
    "`hf download {repo}`"
)


def text_runs(text: str) -> list[tuple[str, str]]:
    """[("zh" | "en", run)] in order: a Chinese run starts at a Han character and keeps the
    digits and punctuation after it; runs with nothing to say are dropped."""
    runs = []
    for zh, other in _RUNS.findall(text):
        if zh.strip():
            runs.append(("zh", zh.strip()))
        elif _SPEAKABLE.search(other):
            runs.append(("en", other.strip()))
    return runs


def phoneme_chunks(
    phonemes: str, soft: int = SOFT_PHONEMES, limit: int = MAX_PHONEMES
) -> list[str]:
    """The phoneme string in pieces for the model: whole sentences joined up to `soft`
    phonemes (memory grows with a piece's audio), a sentence over `limit` cut at spaces."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(phonemes.strip()):
        rest = sentence.strip()
        while len(rest) > limit:
            cut = rest.rfind(" ", 0, limit + 1)
            cut = cut if cut > 0 else limit
            pieces.append(rest[:cut].strip())
            rest = rest[cut:].strip()
        pieces.append(rest)
    chunks: list[str] = []
    for piece in filter(None, pieces):
        if chunks and len(chunks[-1]) + 1 + len(piece) <= soft:
            chunks[-1] += " " + piece
        else:
            chunks.append(piece)
    return chunks


def weights_dir(model_dir: str, repo_id: str) -> tuple[Path, str]:
    """The folder holding the weights and how it was found; never downloads."""
    if model_dir:
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise EngineUnavailable(
                f"kokoro.model_dir {path} has no config.json; " + HUB_HINT.format(repo=repo_id)
            )
        return path, f"model_dir {path}"
    from huggingface_hub import snapshot_download  # noqa: PLC0415 (the engine's extra)
    from huggingface_hub.errors import LocalEntryNotFoundError  # noqa: PLC0415

    try:
        cached = snapshot_download(repo_id, local_files_only=True)
    except LocalEntryNotFoundError as exc:
        raise EngineUnavailable(
            f"{repo_id} is not in the Hugging Face cache; " + HUB_HINT.format(repo=repo_id)
        ) from exc
    return Path(cached), f"hub cache {repo_id} ({cached})"


RESBLOCK_PARTS = ("convs1", "convs2", "adain1", "adain2", "alpha1", "alpha2")
"""What kokoro 0.9.4's `istftnet.AdaINResBlock1` holds (the vocoder's residual blocks)."""


def snake(x: Any, alpha: Any) -> Any:
    """Snake1D, x + sin²(αx)/α, in four passes over the tensor and two allocations where the
    stock expression takes five and five (the profile: elementwise ops were 47% of a bf16
    decode); the same values (fp32 output identical to the stock block's)."""
    t = x.mul(alpha)
    t.sin_()
    t.mul_(t)
    return x.addcmul(t, alpha.reciprocal())


def resblock_in_place(block: Any, x: Any, s: Any) -> Any:
    """`AdaINResBlock1.forward` with `snake` and the residual added in place."""
    parts = zip(*(getattr(block, name) for name in RESBLOCK_PARTS), strict=True)
    for conv1, conv2, norm1, norm2, alpha1, alpha2 in parts:
        xt = conv1(snake(norm1(x, s), alpha1))
        x = conv2(snake(norm2(xt, s), alpha2)).add_(x)
    return x


class KokoroEngine:
    """Kokoro-82M with a voice by name (or a blend `a,b`), Chinese and English in one text."""

    name = "kokoro"

    def __init__(
        self,
        model_dir: str = "",
        repo_id: str = "hexgrad/Kokoro-82M",
        voice: str = "zf_xiaobei",
        device: str = "auto",
        precision: str = "auto",
    ) -> None:
        if importlib.util.find_spec("kokoro") is None or importlib.util.find_spec("misaki") is None:
            raise EngineUnavailable(
                "kokoro cannot be imported here; install the `kokoro` extra "
                "or point worker.python at its venv"
            )
        # Files first (a moment), then torch and the model (seconds): a missing file is told
        # before anything heavy loads.
        folder, self.source = weights_dir(model_dir, repo_id)
        pth = sorted(folder.glob("*.pth"))
        if not pth:
            raise EngineUnavailable(f"no .pth in {folder}; " + HUB_HINT.format(repo=repo_id))
        self.voices = {p.stem: p for p in sorted((folder / "voices").glob("*.pt"))}
        self.default_voice = voice
        if missing := self._unknown(voice):  # a missing default voice is a start-up error
            raise EngineUnavailable(
                f"Kokoro has no voice {missing!r}; it has {', '.join(self.voices) or 'none'}"
            )
        try:
            import torch  # noqa: PLC0415 (heavy)
            from kokoro import KModel  # noqa: PLC0415
            from misaki import espeak, zh  # noqa: PLC0415
        except ImportError as exc:
            raise EngineUnavailable(
                f"kokoro cannot be imported here ({exc}); install the `kokoro` extra "
                "or point worker.python at its venv"
            ) from exc
        self.torch = torch
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.device = resolve_device(torch, device)
        self.model = KModel(repo_id=repo_id, config=config, model=str(pth[0]))
        self.model = self.model.to(self.device).eval()
        self._steer_f0(self.model)
        self.precision = self._fast_vocoder(self.model, precision)
        self._packs: dict[str, Any] = {}
        self.pack(voice)
        english = espeak.EspeakFallback(british=False)
        self.english: Callable[[str], str] = lambda run: english(SimpleNamespace(text=run))[0] or ""
        # The v1.1-zh weights read zhuyin from misaki's v1.1 frontend. kokoro's own pipeline
        # picks it by repo; weights in a folder are known by their file name.
        v11 = not repo_id.endswith("/Kokoro-82M") or "v1_1" in pth[0].name
        self.chinese = zh.ZHG2P(version="1.1" if v11 else None, en_callable=self.english)
        self.g2p = "misaki zh 1.1 (zhuyin)" if v11 else "misaki zh (IPA)"
        self.pitch = 1.0

    def _steer_f0(self, model: Any) -> None:
        """Scale the predicted F0 curve by the prosody's pitch before the decoder sees it."""
        predict = model.predictor.F0Ntrain

        def steered(*args: Any) -> Any:
            f0, noise = predict(*args)
            return f0 * self.pitch, noise

        model.predictor.F0Ntrain = steered

    def _fast_vocoder(self, model: Any, precision: str) -> str:
        """The decoder (iSTFTNet: 92% of the time on a CPU, nearly all of it convolutions and
        the snake activations around them) with its weight norms folded once rather than
        recomputed every call, its residual blocks' snakes computed in place, and in bfloat16
        where `cpu_bf16` says; the rest stays fp32, so durations and pitch are fp32's."""
        for module in model.decoder.modules():
            with contextlib.suppress(ValueError):  # modules without a weight norm
                self.torch.nn.utils.remove_weight_norm(module)
            if all(hasattr(module, a) for a in RESBLOCK_PARTS):
                module.forward = types.MethodType(resblock_in_place, module)
        if not cpu_bf16(self.torch, self.device, precision):
            return "fp32"
        # Autocast would cast every convolution's and linear layer's weights to bfloat16 on
        # every call (a fifth of the lead clause's time in copies); cast once, the same values.
        layers = (self.torch.nn.Conv1d, self.torch.nn.ConvTranspose1d, self.torch.nn.Linear)
        for module in model.decoder.modules():
            if isinstance(module, layers):
                module.to(self.torch.bfloat16)
        decode = model.decoder.forward

        def in_bf16(*args: Any) -> Any:
            with self.torch.autocast("cpu", dtype=self.torch.bfloat16):
                return decode(*args).float()

        model.decoder.forward = in_bf16
        return "bf16 vocoder"

    def pack(self, voice: str) -> Any:
        """The style pack of a voice name or a blend of names joined by commas (their mean)."""
        if voice not in self._packs:
            if missing := self._unknown(voice):
                raise ValueError(f"Kokoro has no voice {missing!r}")
            names = [n.strip() for n in voice.split(",")]
            packs = [self.torch.load(self.voices[n], weights_only=True) for n in names]
            self._packs[voice] = self.torch.mean(self.torch.stack(packs), dim=0)
        return self._packs[voice]

    def _unknown(self, voice: str) -> str | None:
        """The first name in a voice (or a blend `a,b`) that has no style pack."""
        return next(
            (n for n in (x.strip() for x in voice.split(",")) if n not in self.voices), None
        )

    def phonemes(self, text: str) -> str:
        """Kokoro's phoneme string for mixed Chinese and English text."""
        spoken = [
            self.chinese(run)[0] if kind == "zh" else self.english(run)
            for kind, run in text_runs(text)
        ]
        return " ".join(p.strip() for p in spoken if p.strip())

    def synthesize(
        self,
        text: str,
        voice: str | None,
        prosody: Prosody,
        emotion: Sequence[float] | None,
        seed: int | None = None,
    ) -> tuple[Any, int]:
        """Speak the text. The vocoder's harmonic source draws random phases and noise, so a
        seed makes the same request give the same samples."""
        del emotion
        if seed is not None:
            self.torch.manual_seed(seed)
        pack = self.pack(voice or self.default_voice)
        self.pitch = prosody.pitch
        pieces = []
        with self.torch.inference_mode():
            for chunk in phoneme_chunks(self.phonemes(text)):
                audio = self.model(chunk, pack[len(chunk) - 1], speed=max(prosody.rate, 0.25))
                pieces.append(audio.numpy().astype(np.float32) * prosody.volume)
        if not pieces:
            return np.zeros(0, np.float32), RATE
        return np.concatenate(pieces), RATE  # the worker scales a hot peak down, never clips

    def facts(self) -> dict[str, Any]:
        """Weights, device and voices."""
        return {
            "sample_rate": RATE,
            "device": self.device,
            "precision": self.precision,
            "weights": self.source,
            "chinese_g2p": self.g2p,
            "voices": list(self.voices),  # sorted when found
            "voice_blends": True,  # `a,b` is the mean of two style packs
            "exact_speed": [0.5, 2.0],  # the model divides its predicted durations by it
            "languages": {v: [LANGUAGES[v[0]]] for v in self.voices if v[:1] in LANGUAGES},
        }
