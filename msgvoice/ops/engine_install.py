"""The steps of `msgvoice engine install NAME` and `engine remove NAME` (what each engine
needs is in engines.py). Every step can be run again: a venv that is there is kept, pip skips
what is installed, the weights resume, and a config already pointing at the engine is left."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from msgvoice.config import Config
from msgvoice.ops import config_file
from msgvoice.ops.engine_steps import (
    PIP_TIMEOUT_S,
    check_platform,
    check_python,
    hub_files,
    pip_steps,
    proven_before,
    run_logged,
    stamp,
)
from msgvoice.ops.engines import InstallError, Place, Recipe, place, recipe, tree_size
from msgvoice.worker.fetch import files_under, wanted
from msgvoice.worker.protocol import ENGINES

PIP_OPTIONS = ("--disable-pip-version-check", "--no-compile")
"""No bytecode at install (uv's default too): compiling all of torch and Kokoro's packages was
more than half of pip's time here (85 s with it, 40 s without). The proof's worker compiles
what the engine imports, once (see bytecode_kept)."""

Prove = Callable[[Config, Path], Awaitable[float]]
"""Speak one sentence with a config into a file; the seconds of audio (or an exception)."""


@dataclass(frozen=True)
class Request:
    name: str
    config_path: Path
    python: str = sys.executable
    torch: str | None = None
    source: Path | None = None
    repo: str = ""
    dry_run: bool = False


@contextlib.contextmanager
def bytecode_kept() -> Iterator[None]:
    """Let the proof's worker write bytecode into the venv msgvoice owns, even where
    PYTHONDONTWRITEBYTECODE is set: without it, every later worker start would compile torch
    and the engine's modules again (a Kokoro worker's imports took 13.6 s instead of 5.8)."""
    saved = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["PYTHONDONTWRITEBYTECODE"] = saved


def say(line: str) -> None:
    print(line, flush=True)


def voices(files: list[str]) -> list[str]:
    """Kokoro voice names among a weights listing."""
    return sorted(Path(f).stem for f in files if f.startswith("voices/") and f.endswith(".pt"))


def settings(config: Config, r: Recipe, p: Place, repo: str, files: list[str]) -> dict[str, str]:
    """The config keys that point msgvoice at the installed engine."""
    out = {"tts.engine": r.name, "worker.python": str(p.python)}
    if r.name == "kokoro":
        out |= {"kokoro.model_dir": str(p.weights), "kokoro.repo_id": repo}
        have, default = voices(files), ENGINES["kokoro"].default_voice
        wrong = "tts.voice" in config.sources or default not in have
        if have and config.tts.voice not in have and wrong:
            chinese = [v for v in have if v.startswith("zf_")]
            out["tts.voice"] = default if default in have else (chinese or have)[0]
    elif r.name == "indextts2":
        out["indextts.model_dir"] = str(p.weights)
    return out


def weights_listing(r: Recipe, req: Request, repo: str) -> dict[str, int]:
    """The weights' files and sizes: of --from, or as the Hub lists them."""
    if not r.repo:
        return {}
    if req.source is not None:
        if not req.source.is_dir():
            raise InstallError(f"--from {req.source} is not a folder")
        found = files_under(req.source)
        listed = {name: found[name] for name in wanted(list(found), list(r.allow))}
        if not listed:
            raise InstallError(f"--from {req.source} has none of {', '.join(r.allow)}")
        return listed
    return hub_files(repo, r.allow)


def check_disk(p: Place, r: Recipe, weights: dict[str, int]) -> None:
    """InstallError when the state dir's disk cannot take what is left to put there."""
    need = sum(weights.values()) + (0 if p.python.exists() else r.size_mb * 10**6)
    need -= tree_size(p.weights) if p.weights.exists() else 0
    probe = p.root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise InstallError(
            f"about {need / 1e9:.1f} GB is needed at {p.root} and {free / 1e9:.1f} GB is free"
        )


def fetch(p: Place, r: Recipe, repo: str, source: Path | None) -> None:
    """The weights into the engine's folder, by huggingface_hub in the engine's venv; its
    progress bars show on a terminal, else its output goes to the log."""
    args = [str(p.python), "-m", "msgvoice.worker.fetch", repo, str(p.weights)]
    args += [a for pattern in r.allow for a in ("--allow", pattern)]
    args += ["--from", str(source)] if source else []
    if sys.stderr.isatty():
        try:
            done = subprocess.run(
                args, stdout=subprocess.DEVNULL, timeout=PIP_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise InstallError(f"the weights of {repo} took over an hour; run it again") from None
        if done.returncode != 0:
            raise InstallError(
                f"the weights of {repo} did not arrive (above); run it again to resume"
            )
        return
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    try:
        run_logged(args, p.log, f"the weights of {repo} did not arrive", env)
    except InstallError as exc:
        raise InstallError(f"{exc}; run it again to resume") from None


async def install(config: Config, req: Request, prove: Prove, environ: Mapping[str, str]) -> int:
    """Install, prove, then point the config at it; InstallError leaves the config as it was."""
    r = recipe(req.name)
    check_platform(r)
    p, repo = place(config, r.name), req.repo or r.repo
    version = check_python(r, req.python)
    weights = weights_listing(r, req, repo)
    check_disk(p, r, weights)
    steps = pip_steps(r, req.torch)
    planned = settings(config, r, p, repo, list(weights))
    whence = req.source or f"the Hugging Face Hub ({repo})"
    fetched = f"{len(weights)} files, {sum(weights.values()) / 1e6:.0f} MB from {whence}"
    changes = config_file.changes(config, planned)
    plan = [
        f"{r.name}: {r.about}",
        f"  into {p.root} (Python {version}, about {r.size_mb / 1000:.1f} GB of packages)",
        *(f"  pip install {' '.join(step)}" for step in steps),
        *([f"  weights: {fetched}"] if weights else []),
        *(f"  {req.config_path}: {c}" for c in changes or ["nothing to change"]),
    ]
    say("\n".join(plan))
    if req.dry_run:
        return 0
    if (before := proven_before(p, version, steps, weights)) is not None:
        return again(req, planned, environ, before, bool(changes))
    p.root.mkdir(parents=True, exist_ok=True)
    if not p.python.exists():
        say("making its venv ...")
        run_logged([req.python, "-m", "venv", str(p.python.parent.parent)], p.log, "venv failed")
    for step in steps:
        say(f"installing {step[0].split('[')[0] if step[0] != '--editable' else step[1]} ...")
        pip = [str(p.python), "-m", "pip", "install", *PIP_OPTIONS, *step]
        run_logged(pip, p.log, f"pip could not install {' '.join(step)}")
    if weights:
        say("fetching the weights ...")
        fetch(p, r, repo, req.source)
    staged, proof_config = config_file.staged(req.config_path, planned, environ)
    try:
        say("speaking one sentence to prove it ...")
        try:
            with bytecode_kept():
                seconds = await prove(proof_config, p.root / "proof.ogg")
        except Exception as exc:
            raise InstallError(f"{r.name} is installed but did not speak: {exc}") from None
        stamp(p, r, version, steps, f"{seconds:.2f} s of audio")
        config_file.commit(staged, req.config_path)
    finally:
        staged.unlink(missing_ok=True)
    say(f"it speaks ({seconds:.2f} s in {p.root / 'proof.ogg'}); {req.config_path} now uses it")
    after_pointing(planned, environ)
    return 0


def after_pointing(planned: dict[str, str], environ: Mapping[str, str]) -> None:
    """What a user needs to know once the config file points at the engine."""
    say("a daemon that is running speaks with it once restarted")
    for name in config_file.overridden(planned, environ):
        say(f"note: {name} is set in the environment and overrides the file")


def again(
    req: Request, planned: dict[str, str], environ: Mapping[str, str], before: str, changed: bool
) -> int:
    """An install that is there as planned and spoke: nothing is installed or fetched again;
    the config is pointed at it if it is not (`engine remove` first to install it anew)."""
    say(f"installed as planned, and it spoke ({before}): nothing to install or fetch")
    if changed:
        staged, _ = config_file.staged(req.config_path, planned, environ)
        try:
            config_file.commit(staged, req.config_path)
        finally:
            staged.unlink(missing_ok=True)
        say(f"{req.config_path} now uses it")
        after_pointing(planned, environ)
    return 0


def remove(config: Config, name: str, config_path: Path, environ: Mapping[str, str]) -> int:
    """Take the engine away, and the config's keys that point at it back to their defaults."""
    r = recipe(name)
    p = place(config, r.name)
    if not p.root.exists():
        raise InstallError(f"{name} is not installed (nothing at {p.root})")
    current = config.effective()
    inside = [
        dotted
        for dotted in ("worker.python", "kokoro.model_dir", "indextts.model_dir")
        if str(current[dotted.split(".")[0]][dotted.split(".")[1]]).startswith(str(p.root))
    ]
    back: dict[str, str | None] = dict.fromkeys(inside)
    if config.tts.engine == name:
        back["tts.engine"] = None
        if (p.weights / "voices" / f"{config.tts.voice}.pt").exists():
            back["tts.voice"] = None
    if back and config_path.exists():
        staged, _ = config_file.staged(config_path, back, environ)
        config_file.commit(staged, config_path)
        for line in config_file.changes(config, back):
            say(f"{config_path}: {line}")
    size = tree_size(p.root)
    shutil.rmtree(p.root)
    say(f"removed {name} ({size / 1e9:.2f} GB at {p.root})")
    return 0


__all__ = ["InstallError", "Request", "install", "remove"]
