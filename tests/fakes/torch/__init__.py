"""The few torch APIs msgvoice's IndexTTS2 adapter touches. The machine it pretends to be comes
from $FAKE_TORCH_DEVICE: "cpu", "mps", or "cuda:<major>.<minor>" (compute capability)."""

from __future__ import annotations

import os
from types import SimpleNamespace

from fakelog import record


def _device() -> str:
    return os.environ.get("FAKE_TORCH_DEVICE", "cpu")


class _Cuda:
    @staticmethod
    def is_available() -> bool:
        return _device().startswith("cuda")

    @staticmethod
    def get_device_capability(device: object = None) -> tuple[int, int]:
        major, minor = _device().split(":")[1].split(".")
        return int(major), int(minor)

    @staticmethod
    def empty_cache() -> None:
        record("torch.cuda.empty_cache")


class _Mps:
    @staticmethod
    def empty_cache() -> None:
        record("torch.mps.empty_cache")

    @staticmethod
    def set_per_process_memory_fraction(fraction: float) -> None:
        record("torch.mps.set_per_process_memory_fraction", fraction=fraction)


def manual_seed(seed: int) -> None:
    record("torch.manual_seed", seed=seed)


cuda = _Cuda()
mps = _Mps()
backends = SimpleNamespace(
    cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=False)),
    cudnn=SimpleNamespace(allow_tf32=True, benchmark=False),
    mps=SimpleNamespace(is_available=lambda: _device() == "mps"),
)
