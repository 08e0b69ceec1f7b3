"""IndexTTS2 (upstream source as `indextts2-cli==1.0.2`), driven with keyword arguments only.

Runs only inside the worker, usually under IndexTTS2's own interpreter (`worker.python`).
What the installed IndexTTS2 cannot take (a constructor argument it lacks, a generation knob its
`infer` hard-codes) is listed in `facts()["ignored"]`, which doctor reports, never dropped
silently. Style hints go in as emotion vectors; IndexTTS2's own emotion-from-text path (slow,
unstable) is used only when configured.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import inspect
import io
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msgvoice.worker.engines.devices import choose_precision, resolve_device
from msgvoice.worker.engines.references import Voices
from msgvoice.worker.protocol import EngineUnavailable, Prosody

EMO_ALPHA_DEFAULT = 0.65
"""IndexTTS2's web UI default emotion weight."""
EMO_BIAS = (0.9375, 0.875, 1.0, 1.0, 0.9375, 0.9375, 0.6875, 0.5625)
"""IndexTTS2's own de-emphasis of emotions that can sound strange (its web UI applies it,
`normalize_emo_vec(apply_bias=True)`), in the order happy, angry, sad, afraid, disgusted,
melancholic, surprised, calm."""
EMO_SUM_MAX = 0.8
HUB_DOWNLOADS = (
    "facebook/w2v-bert-2.0",
    "amphion/MaskGCT (semantic_codec/model.safetensors)",
    "funasr/campplus (campplus_cn_common.bin)",
    "nvidia/bigvgan_v2_22khz_80band_256x",
)
"""What IndexTTS2 fetches from the Hugging Face hub at its first start, besides checkpoints."""
HUB_HINT = (
    "IndexTTS2 fetches {files} from the Hugging Face hub at its first start and could not ({exc}). "
    "Fetch them once on a machine with internet into the same HF_HOME the worker uses, e.g. "
    "`huggingface-cli download facebook/w2v-bert-2.0`, then set HF_HUB_OFFLINE=1"
)


def on_indextts_scale(vector: Sequence[float]) -> list[float]:
    """A vector as IndexTTS2's own UI would hand it to `infer`: the bias first, then the
    0.8 sum cap."""
    biased = [v * b for v, b in zip(vector, EMO_BIAS, strict=True)]
    total = sum(biased)
    return [v * EMO_SUM_MAX / total for v in biased] if total > EMO_SUM_MAX else biased


_STAGE = re.compile(
    r">> (gpt_gen_time|gpt_forward_time|s2mel_time|bigvgan_time|"
    r"Total inference time): ([\d.]+) seconds"
)
_STAGE_NAMES = {
    "gpt_gen_time": "gpt_ms",
    "gpt_forward_time": "gpt_forward_ms",
    "s2mel_time": "s2mel_ms",
    "bigvgan_time": "vocoder_ms",
    "Total inference time": "engine_total_ms",
}


class IndexTts2Engine:
    """The production engine: voice cloning and emotion vectors."""

    name = "indextts2"

    def __init__(
        self,
        *,
        model_dir: str = "checkpoints",
        cfg_path: str = "",
        ref_audio: str = "",
        voices_dir: str = "",
        device: str = "auto",
        precision: str = "auto",
        cache_dir: str = "",
        **knobs: Any,
    ) -> None:
        root = Path(model_dir).expanduser()
        cfg = Path(cfg_path).expanduser() if cfg_path else root / "config.yaml"
        if not root.is_dir() or not cfg.is_file():
            raise EngineUnavailable(
                f"IndexTTS2 checkpoints not found: {cfg} is missing "
                "(download them and set indextts.model_dir)"
            )
        self.knobs = knobs
        self.voices = Voices(ref_audio, voices_dir, Path(cache_dir or root / ".msgvoice-refs"))
        try:
            torch = importlib.import_module("torch")
            infer_v2 = importlib.import_module("indextts.infer_v2")
        except ImportError as exc:
            raise EngineUnavailable(
                f"IndexTTS2 cannot be imported here ({exc}); install the "
                "`indextts` extra or point worker.python at its venv"
            ) from exc
        self.torch = torch
        self.device = resolve_device(torch, device)
        self.precision = choose_precision(torch, self.device, precision)
        self.ignored: list[str] = []
        self._tune_torch()
        cls = infer_v2.IndexTTS2
        try:
            self.tts = cls(**self._constructor_kwargs(cls, str(cfg), str(root)))
        except OSError as exc:  # the hub's downloads fail as OSError subclasses
            raise EngineUnavailable(
                HUB_HINT.format(files=", ".join(HUB_DOWNLOADS), exc=exc)
            ) from exc
        self._apply_cache_length()
        self._generation_knobs = self._generation_kwargs(cls)
        self.last_stats: dict[str, float] = {}

    # -- construction --------------------------------------------------------------------------

    def _tune_torch(self) -> None:
        torch, knobs = self.torch, self.knobs
        if self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = bool(knobs.get("tf32", True))
            torch.backends.cudnn.allow_tf32 = bool(knobs.get("tf32", True))
            torch.backends.cudnn.benchmark = bool(knobs.get("cudnn_benchmark", False))
        fraction = float(knobs.get("mps_memory_fraction", 0) or 0)
        if fraction and self.device == "mps":
            torch.mps.set_per_process_memory_fraction(fraction)
        elif fraction:
            self.ignored.append("mps_memory_fraction (not on MPS)")

    def _constructor_kwargs(self, cls: Any, cfg: str, root: str) -> dict[str, Any]:
        wanted: dict[str, Any] = {
            "cfg_path": cfg,
            "model_dir": root,
            "device": self.device,
            "use_fp16": self.precision in ("fp16", "bf16"),
            "use_cuda_kernel": bool(self.knobs.get("use_cuda_kernel", True))
            and self.device.startswith("cuda"),
            "use_deepspeed": bool(self.knobs.get("use_deepspeed", False)),
            "use_accel": bool(self.knobs.get("use_accel", False)),
            "use_torch_compile": bool(self.knobs.get("use_torch_compile", False)),
            # Newer versions load a Qwen emotion-from-text model unless told not to: only the
            # text path needs it (memory and start-up time otherwise).
            "use_qwen_emo": bool(self.knobs.get("use_emo_text", False)),
        }
        accepted = inspect.signature(cls.__init__).parameters
        if self.precision == "bf16" and "use_bf16" not in accepted:
            self.ignored.append("bf16 (this IndexTTS2 takes only use_fp16: running fp16)")
        if self.precision == "bf16" and "use_bf16" in accepted:
            wanted |= {"use_bf16": True, "use_fp16": False}
        for name in [k for k in wanted if k not in accepted]:
            if wanted[name]:
                self.ignored.append(name)
            del wanted[name]
        return wanted

    def _apply_cache_length(self) -> None:
        length = int(self.knobs.get("max_seq_length", 0) or 0)
        if not length:
            return
        try:
            estimator = self.tts.s2mel.models["cfm"].estimator
            estimator.setup_caches(max_batch_size=1, max_seq_length=length)
        except (AttributeError, KeyError, TypeError):
            self.ignored.append("max_seq_length (no setup_caches on this IndexTTS2)")

    def _generation_kwargs(self, cls: Any) -> dict[str, Any]:
        """Sampling knobs go through **generation_kwargs; diffusion steps only where infer
        reads them from there (1.0.2 hard-codes 25)."""
        knobs: dict[str, Any] = {
            k: self.knobs[k]
            for k in ("num_beams", "top_k", "top_p", "temperature", "max_mel_tokens")
            if k in self.knobs
        }
        steps = self.knobs.get("diffusion_steps")
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = ""
        if steps is not None and '"diffusion_steps"' in source:
            knobs["diffusion_steps"] = steps
        elif steps is not None and steps != 25:
            self.ignored.append(f"diffusion_steps={steps} (this IndexTTS2 always uses 25)")
        return knobs

    # -- synthesis -----------------------------------------------------------------------------

    def synthesize(
        self,
        text: str,
        voice: str | None,
        prosody: Prosody,
        emotion: Sequence[float] | None,
        seed: int | None = None,
    ) -> tuple[Any, int]:
        """Speak text in the voice's timbre with the emotion vector; prosody is not used
        (IndexTTS2 expresses emotion itself). A seed fixes its sampling (torch, numpy,
        random); GPU kernels may still vary slightly between runs."""
        del prosody
        if seed is not None:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            self.torch.manual_seed(seed)
        use_emo_text = bool(self.knobs.get("use_emo_text", False))
        kwargs: dict[str, Any] = {
            "spk_audio_prompt": self.voices.prepared(voice),
            "text": text,
            "output_path": None,
            "emo_vector": (
                on_indextts_scale(emotion) if emotion is not None and not use_emo_text else None
            ),
            "emo_alpha": min(1.0, float(self.knobs.get("emo_alpha", EMO_ALPHA_DEFAULT))),
            "use_emo_text": use_emo_text,
            "interval_silence": int(self.knobs.get("interval_silence_ms", 200)),
            "max_text_tokens_per_segment": int(self.knobs.get("max_text_tokens_per_segment", 120)),
            "verbose": False,
            **self._generation_knobs,
        }
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter):
                result = self.tts.infer(**kwargs)
        finally:
            sys.stderr.write(chatter.getvalue())
            self._release()
        self.last_stats = {
            _STAGE_NAMES[m.group(1)]: float(m.group(2)) * 1000
            for m in _STAGE.finditer(chatter.getvalue())
        }
        if not result:
            raise RuntimeError("IndexTTS2 produced no audio for this text")
        rate, samples = result
        return samples, int(rate)

    def _release(self) -> None:
        if not self.knobs.get("empty_cache", True):
            return
        gc.collect()
        if self.device.startswith("cuda"):
            self.torch.cuda.empty_cache()
        elif self.device == "mps":
            self.torch.mps.empty_cache()

    def facts(self) -> dict[str, Any]:
        """Device, precision, the knobs in force and the ones this IndexTTS2 cannot take."""
        return {
            "device": self.device,
            "precision": self.precision,
            "generation": self._generation_knobs,
            "ignored": self.ignored,
            "voices": self.voices.names(),
        }
