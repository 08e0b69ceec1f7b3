"""Fetch an engine's weights from the Hugging Face Hub into a folder, resuming what an earlier
run left half done. It runs in the engine's own environment, where huggingface_hub is:

    python -m msgvoice.worker.fetch REPO DEST [--revision REV] [--allow GLOB ...] [--from DIR]

The listing, the file metadata and the download itself are huggingface_hub's (`model_info`,
`get_hf_file_metadata`, `http_get`: its retries, its progress bar on a terminal, `HF_ENDPOINT`
and `HF_TOKEN`). What it no longer does across runs is resume: since its 2.x a partial file is
deleted when a download fails. So each file is downloaded into `DEST/.partial/`, kept when the
network goes away, and continued from its length next time (`http_get`'s `resume_size`); a
finished file is checked against its sha256 (LFS) or size, then moved into place.
`--from DIR` copies the same files from a folder instead (a machine without a network).
`DEST/.complete.json` lists the files and sizes once all are there (what doctor reads).

Exit 0 when the weights are complete; 1 with one line on stderr when they cannot be.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

COMPLETE = ".complete.json"
PARTIAL = ".partial"


def wanted(names: list[str], patterns: list[str]) -> list[str]:
    """The names matching any pattern (all of them without patterns)."""
    return [n for n in names if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]


def files_under(folder: Path) -> dict[str, int]:
    """Every file under `folder` by its path there (as the Hub names them), with its size."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(repo: str, revision: str, sibling: Any, dest: Path) -> None:
    """One file into `dest`, continued from its partial copy if there is one."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url  # noqa: PLC0415
    from huggingface_hub.file_download import http_get  # noqa: PLC0415
    from huggingface_hub.utils import build_hf_headers  # noqa: PLC0415

    target = dest / sibling.rfilename
    if target.is_file() and target.stat().st_size == sibling.size:
        return
    url = hf_hub_url(repo, sibling.rfilename, revision=revision)
    meta = get_hf_file_metadata(url)
    headers = build_hf_headers()
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a token stays on the Hub, not its file store
    part = dest / PARTIAL / sibling.rfilename
    part.parent.mkdir(parents=True, exist_ok=True)
    with part.open("ab") as f:
        http_get(
            meta.location,
            f,
            resume_size=f.tell(),
            headers=headers,
            expected_size=meta.size,
            displayed_filename=sibling.rfilename,
        )
    if sibling.lfs is not None and _sha256(part) != sibling.lfs.sha256:
        part.unlink()
        raise OSError(f"{sibling.rfilename} arrived damaged (sha256 differs); fetch it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)


def fetch(repo: str, dest: Path, revision: str = "main", patterns: list[str] | None = None) -> int:
    """Every wanted file of `repo` at `revision` into `dest`; the bytes it holds then."""
    from huggingface_hub import HfApi  # noqa: PLC0415 (the engine's environment has it)

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    by_name = {s.rfilename: s for s in info.siblings or []}
    names = wanted(sorted(by_name), patterns or [])
    if not names:
        raise OSError(f"{repo} has no files matching {' '.join(patterns or [])}")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / COMPLETE).unlink(missing_ok=True)
    left = sum(max(0, by_name[n].size - _have(dest, n)) for n in names)
    free = shutil.disk_usage(dest).free
    if left > free:
        raise OSError(f"{left / 1e6:.0f} MB to download and {free / 1e6:.0f} MB free at {dest}")
    for name in names:
        _download(repo, info.sha or revision, by_name[name], dest)
    files = {n: by_name[n].size for n in names}
    _finish(dest, {"repo": repo, "sha": info.sha}, files)
    return sum(files.values())


def copy(source: Path, dest: Path, patterns: list[str] | None = None) -> int:
    """Every wanted file under `source` into `dest`; the bytes it holds then."""
    found = files_under(source)
    files = {name: found[name] for name in wanted(list(found), patterns or [])}
    if not files:
        raise OSError(f"{source} has no files matching {' '.join(patterns or [])}")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / COMPLETE).unlink(missing_ok=True)
    for name, size in files.items():
        target, part = dest / name, dest / PARTIAL / name
        if target.is_file() and target.stat().st_size == size:
            continue
        part.parent.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, part)
        os.replace(part, target)
    _finish(dest, {"from": str(source)}, files)
    return sum(files.values())


def _finish(dest: Path, origin: dict[str, Any], files: dict[str, int]) -> None:
    (dest / COMPLETE).write_text(json.dumps({**origin, "files": files}))
    shutil.rmtree(dest / PARTIAL, ignore_errors=True)


def _have(dest: Path, name: str) -> int:
    """The bytes of `name` already here, whole or partial."""
    for path in (dest / name, dest / PARTIAL / name):
        if path.is_file():
            return path.stat().st_size
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msgvoice.worker.fetch")
    parser.add_argument("repo")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--revision", default="main")
    parser.add_argument("--allow", action="append", default=[])
    parser.add_argument("--from", dest="source", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.source is not None:
            size = copy(args.source, args.dest, args.allow)
        else:
            size = fetch(args.repo, args.dest, args.revision, args.allow)
    except Exception as exc:
        print(
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr
        )
        return 1
    print(json.dumps({"bytes": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
