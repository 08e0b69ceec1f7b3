"""Where a torch engine runs and at what precision (IndexTTS2 and Kokoro), in the worker."""

from __future__ import annotations

from typing import Any


def choose_precision(torch: Any, device: str, wanted: str) -> str:
    """bf16 on sm_80+, fp16 on sm_70/75, fp32 on CPU; MPS keeps what is asked (fp32 on auto)."""
    if wanted != "auto":
        return "fp32" if device == "cpu" else wanted
    if device.startswith("cuda"):
        major, _minor = torch.cuda.get_device_capability()
        return "bf16" if major >= 8 else "fp16" if major >= 7 else "fp32"
    return "fp32"


def resolve_device(torch: Any, wanted: str) -> str:
    """cuda, mps or cpu: what is asked, or the best available on auto."""
    if wanted != "auto":
        return "cuda:0" if wanted == "cuda" else wanted
    if torch.cuda.is_available():
        return "cuda:0"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def cpu_bf16(torch: Any, device: str, wanted: str) -> bool:
    """Whether a vocoder runs in bfloat16 on the CPU: when asked, or on auto where oneDNN has
    native bf16 (AVX512-BF16 or AMX), which doubles its convolutions' throughput."""
    if device != "cpu" or wanted == "fp32":
        return False
    return wanted == "bf16" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
