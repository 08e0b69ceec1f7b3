"""The generated Kokoro checkpoints (tests/kokoro_checkpoint.py) the Kokoro tests load, made
once per test run under .venv-kokoro and kept in pytest's cache (conftest makes the fixtures
every module's)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KOKORO_PYTHON = REPO / ".venv-kokoro" / "bin" / "python"
GENERATOR = REPO / "tests" / "kokoro_checkpoint.py"
TEXT = "今天天气很好，我们下午一起去公园散步吧。"

needs_kokoro = pytest.mark.skipif(
    not KOKORO_PYTHON.exists(), reason="scripts/test builds .venv-kokoro; run it first"
)


VARIANTS = {"v1.0": (), "v1.1-zh": ("--v1.1-zh",)}
"""The checkpoints the tests load, by the generator flags that make them."""


@pytest.fixture(scope="session")
def checkpoints(request: pytest.FixtureRequest) -> dict[str, Path]:
    """Every generated checkpoint, each kept in pytest's cache under a key of what makes it:
    the generator's source, its flags and the installed kokoro, misaki and torch (their
    dist-info names carry the versions). The missing ones are made in one generator run, by
    one test process while the others wait."""
    site = sorted(KOKORO_PYTHON.parent.parent.glob("lib/python*/site-packages"))
    installed = sorted(d.name for s in site for d in s.glob("*.dist-info"))
    wanted = [n for n in installed if n.split("-")[0].lower() in ("kokoro", "misaki", "torch")]
    cache = getattr(request.config, "cache", None)
    folders = {}
    for variant, flags in VARIANTS.items():
        key = hashlib.sha256(GENERATOR.read_bytes() + repr((flags, wanted)).encode()).hexdigest()
        if cache is not None:
            folders[variant] = cache.mkdir(f"kokoro-{key[:16]}")
        else:  # -p no:cacheprovider: once per run
            folders[variant] = request.getfixturevalue("tmp_path_factory").mktemp("kokoro")
    with _held(next(iter(folders.values())).parent / "kokoro-checkpoints.lock"):
        _make_missing(folders)
    return folders


@contextlib.contextmanager
def _held(lock: Path) -> Iterator[None]:
    """An exclusive lock across test processes: the first makes the checkpoints, the others
    wait for them rather than make them again beside it."""
    deadline = time.monotonic() + 600  # the generator's own timeout is 300 s
    with lock.open("w") as held:
        while True:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{lock} was held for 10 minutes"
                time.sleep(0.1)
        yield


def _make_missing(folders: dict[str, Path]) -> None:
    """Run the generator once for every checkpoint not made yet."""
    missing = {v: f for v, f in folders.items() if not (f / "config.json").is_file()}
    if missing:
        made = {
            v: Path(tempfile.mkdtemp(prefix=f"{f.name}.", dir=f.parent)) for v, f in missing.items()
        }
        args = [str(a) for v, path in made.items() for a in (*VARIANTS[v], path)]
        done = subprocess.run(
            [str(KOKORO_PYTHON), str(GENERATOR), *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        for variant, path in made.items():
            with contextlib.suppress(OSError):  # another run made it meanwhile: as good
                shutil.rmtree(missing[variant])
                path.rename(missing[variant])  # config.json comes with the whole checkpoint
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def weights(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["v1.0"]


@pytest.fixture(scope="session")
def weights_v11(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["v1.1-zh"]
