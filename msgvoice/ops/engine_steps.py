"""The machine-facing steps of an engine install: is this platform and Python able to run it,
what the Hub holds, and pip run into the engine's venv with its output kept in a log."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from msgvoice import __version__
from msgvoice.ops.engines import InstallError, Place, Recipe
from msgvoice.worker.fetch import wanted

PIP_TIMEOUT_S = 3600.0
HUB_TIMEOUT_S = 30.0
CPU_TORCH = ("--index-url", "https://download.pytorch.org/whl/cpu")
"""Where pip finds torch's CPU build (PyPI's Linux wheel is the CUDA one, several GB)."""


def check_platform(r: Recipe) -> None:
    """InstallError when this machine cannot run the engine."""
    if not r.accelerator:
        return
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return
    if sys.platform.startswith("linux") and shutil.which("nvidia-smi"):
        return
    raise InstallError(
        f"{r.name} needs an NVIDIA GPU or Apple Silicon, and this is {platform.system()} "
        f"{platform.machine()} without one; kokoro runs on any CPU"
    )


def check_python(r: Recipe, python: str) -> str:
    """The interpreter's version, if the engine supports it; else InstallError."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"cannot run {python}: {exc}") from None
    version = done.stdout.strip()
    if done.returncode != 0 and "venv" in done.stderr:
        raise InstallError(f"{python} has no venv module (on Debian: apt install python3-venv)")
    if done.returncode != 0 or not re.fullmatch(r"\d+\.\d+", version):
        raise InstallError(f"{python} is not a Python interpreter")
    if version not in r.pythons:
        raise InstallError(
            f"{r.name} needs Python {' or '.join(r.pythons)}, and {python} is {version}; "
            "pass --python with one of those"
        )
    return version


def hub_files(repo: str, allow: tuple[str, ...]) -> dict[str, int]:
    """The weights' files and sizes as the Hub lists them (its endpoint from HF_ENDPOINT), to
    fail fast and check the disk before anything is installed."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    token = os.environ.get("HF_TOKEN")
    try:
        answer = httpx.get(
            f"{endpoint}/api/models/{repo}/revision/main",
            params={"blobs": "true"},
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=HUB_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        raise InstallError(
            f"cannot reach the Hugging Face Hub at {endpoint}: {exc or type(exc).__name__}; "
            "without a network, fetch the weights elsewhere and pass --from DIR"
        ) from None
    if answer.status_code != 200:
        raise InstallError(f"{endpoint}: {hub_refusal(answer, repo, bool(token))}")
    try:
        siblings = answer.json().get("siblings") or []
        sizes = {s["rfilename"]: int(s.get("size") or 0) for s in siblings}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise InstallError(
            f"{endpoint} did not answer as the Hugging Face Hub does (a proxy's or a network's "
            "sign-in page?); set HF_ENDPOINT to the Hub or a mirror, or pass --from DIR"
        ) from None
    return {name: sizes[name] for name in wanted(list(sizes), list(allow))}


def hub_refusal(answer: httpx.Response, repo: str, has_token: bool) -> str:
    """What the Hub's refusal of a listing means, as huggingface_hub reads it (`X-Error-Code`,
    `X-Error-Message`; a 401 alike for a private, gated or missing repo)."""
    status = answer.status_code
    if answer.headers.get("X-Error-Message") == "Invalid credentials in Authorization header":
        return "HF_TOKEN was refused as invalid; make a new one at huggingface.co/settings/tokens"
    if answer.headers.get("X-Error-Code") == "GatedRepo":
        return (
            f"{repo} is gated and this token's account has no access yet ({status}); "
            "ask for it on the model's page, or pass --from DIR"
        )
    if status == 401 and not has_token:
        return f"{repo} is not public (401: private, gated or missing); set HF_TOKEN to read it"
    if status in (401, 403):
        return f"{repo} may not be read with this HF_TOKEN ({status})"
    if status >= 500 or status == 429:
        return f"the Hub answered {status} for {repo}; run it again later"
    return f"no model {repo} ({status})"


def msgvoice_spec(extra: str) -> list[str]:
    """pip arguments that install this msgvoice with `extra`: from the same source tree or
    file when it was installed from one (PEP 610's direct_url.json), else this version from
    the package index."""
    found = (
        d.read_text("direct_url.json") for d in importlib.metadata.distributions(name="msgvoice")
    )
    direct = next(filter(None, found), None)  # a source tree's egg-info has none: the next
    info = json.loads(direct) if direct else {}
    url = str(info.get("url", ""))
    if url.startswith("file://"):
        path = url.removeprefix("file://")
        editable = bool(info.get("dir_info", {}).get("editable"))
        if "dir_info" in info:
            return [*(["--editable"] if editable else []), f"{path}[{extra}]"]
        return [f"msgvoice[{extra}] @ {url}"]
    return [f"msgvoice[{extra}]=={__version__}"]


def torch_spec(given: str | None) -> list[str]:
    """pip arguments for torch: `given` as it is, else the CPU build on Linux without an
    NVIDIA GPU (else PyPI's, which is CUDA on Linux and MPS on macOS)."""
    if given:
        return [given]
    if sys.platform.startswith("linux") and not shutil.which("nvidia-smi"):
        return ["torch", *CPU_TORCH]
    return ["torch"]


def pip_steps(r: Recipe, torch: str | None) -> list[list[str]]:
    steps = [torch_spec(torch)] if r.torch else []
    return [*steps, msgvoice_spec(r.extra)]


def run_logged(args: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    """Run a step with its output appended to the log; InstallError with its last error line."""
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        try:
            done = subprocess.run(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=PIP_TIMEOUT_S,
                env=env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise InstallError(f"{what}: {last_error(log)} (the whole log: {log})")


def last_error(log: Path) -> str:
    """The most telling line of a failed step's log."""
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("WARNING:", "$ "))]
    errors = [ln for ln in lines if ln.startswith("ERROR:") or "Error" in ln.split(":")[0]]
    return (errors or lines or ["no output"])[-1][:300]


def stamp(p: Place, r: Recipe, python_version: str, steps: list[list[str]], proof: str) -> None:
    p.stamp.write_text(
        json.dumps(
            {
                "engine": r.name,
                "python": python_version,
                "pip": steps,
                "weights": r.repo,
                "proof": proof,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
    )


def proven_before(
    p: Place, python_version: str, steps: list[list[str]], weights: dict[str, int]
) -> str | None:
    """When this very install (the same Python and pip steps, every weight file there at its
    listed size) spoke before: what its stamp says it spoke, and when. Else None."""
    try:
        found = json.loads(p.stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or not p.python.exists():
        return None
    if found.get("python") != python_version or found.get("pip") != steps:
        return None
    for name, size in weights.items():
        path = p.weights / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return f"{found.get('proof')}, {found.get('at')}"
