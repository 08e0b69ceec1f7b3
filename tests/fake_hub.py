"""A loopback Hugging Face Hub that serves one model repository from a folder, as the Hub
serves it to `huggingface_hub` (read in huggingface_hub 2.4.0: `hf_api.py` `model_info` and
`ModelInfo`/`RepoSibling`; `file_download.py` `hf_hub_url`, `get_hf_file_metadata`,
`http_get`; `utils/_http.py` `_httpx2_follow_hub_redirects_with_backoff`; and the Hub's
documented download headers):

- `GET /api/models/<repo>/revision/<rev>?blobs=true` answers `{"id", "sha", "siblings":
  [{"rfilename", "size", "blobId", "lfs"?}]}`; `lfs` (`{"sha256", "size", "pointerSize"}`) is
  there for files kept in LFS, here those of 1 MB or more, as the Hub keeps weights. An unknown
  repo is 404 with `X-Error-Code: RepoNotFound`, an unknown revision `RevisionNotFound`.
- `HEAD /<repo>/resolve/<rev>/<path>` carries `X-Repo-Commit` and an `ETag` (the git blob id).
  An LFS file is a 302 to another host, its content-addressed store (here `localhost` where the
  Hub is `127.0.0.1`, as huggingface.co sends weights to cas-bridge.xethub.hf.co), with
  `X-Linked-Etag` (its sha256) and `X-Linked-Size`: huggingface_hub takes the metadata from
  that answer and does not follow a redirect off the Hub. No `X-Xet-Hash` is sent, so plain
  HTTP is used (what the Hub does for clients without hf_xet).
- `GET` of a file or a store object honours `Range: bytes=N-` with a 206 and `Content-Range`,
  as both do; huggingface_hub resumes with it.
- Access (huggingface_hub 2.4.0 `utils/_http.py` `hf_raise_for_status`, whose comment says the
  Hub answers 401 alike for a private, a gated or a missing repo when unauthenticated): with
  `token` set, a request without `Authorization: Bearer <token>` is a 401 with `X-Error-Code:
  RepoNotFound`, one with another token a 401 with `X-Error-Message: Invalid credentials in
  Authorization header`; with `gated`, the right token gets a 403 `X-Error-Code: GatedRepo`
  (access not granted to that account). `lobby` answers every request with a 200 HTML page,
  as a captive portal or a proxy's login page does.
- `cut_after(n)`: the next store download sends `n` bytes, then the connection is dropped, and
  every download after it is a 503 until `heal()`: a network that goes away mid-download.

Every request is logged as (method, path, Range header) for the tests to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

LFS_FROM = 1 << 20
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Serves `folder` as the model repository `repo` at revision main."""

    def __init__(
        self,
        repo: str,
        folder: Path,
        chunk: int = 1 << 16,
        *,
        token: str | None = None,
        gated: bool = False,
        lobby: bool = False,
    ) -> None:
        self.repo, self.folder, self.chunk = repo, folder, chunk
        self.token, self.gated, self.lobby = token, gated, lobby
        self.requests: list[tuple[str, str, str | None]] = []
        self._cut: int | None = None
        self._down = False
        self._files = {
            p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()
        }
        self._sha256 = {name: _sha256(path) for name, path in self._files.items()}
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, n: int) -> None:
        self._cut, self._down = n, False

    def heal(self) -> None:
        self._cut, self._down = None, False

    def ranges(self, name: str) -> list[str | None]:
        """The Range headers of the store downloads of file `name`."""
        sha = self._sha256[name]
        return [r for m, p, r in self.requests if m == "GET" and p == f"/store/{sha}"]

    @contextlib.contextmanager
    def serving(self) -> Iterator[FakeHub]:
        """Serve on a loopback port from a thread of its own, for as long as the block runs."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        runner = web.AppRunner(self._app(), access_log=None)

        async def start() -> None:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            started.set()

        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        started.wait(10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._log])
        app.router.add_get("/api/models/{ns}/{name}/revision/{rev}", self._info)
        app.router.add_route("*", "/{ns}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        app.router.add_get("/store/{sha}", self._store)
        return app

    @web.middleware
    async def _log(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path, request.headers.get("Range")))
        if self.lobby:
            return web.Response(
                text="<html>Sign in to the network</html>", content_type="text/html"
            )
        if self.token is not None:
            given = request.headers.get("Authorization")
            if given is None:
                raise web.HTTPUnauthorized(headers={"X-Error-Code": "RepoNotFound"})
            if given != f"Bearer {self.token}":
                message = "Invalid credentials in Authorization header"
                raise web.HTTPUnauthorized(headers={"X-Error-Message": message})
            if self.gated:
                raise web.HTTPForbidden(headers={"X-Error-Code": "GatedRepo"})
        return await handler(request)

    def _check_repo(self, request: web.Request) -> None:
        if f"{request.match_info['ns']}/{request.match_info['name']}" != self.repo:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"})
        if request.match_info["rev"] not in ("main", COMMIT):
            raise web.HTTPNotFound(headers={"X-Error-Code": "RevisionNotFound"})

    async def _info(self, request: web.Request) -> web.Response:
        self._check_repo(request)
        siblings = []
        for name, path in self._files.items():
            data = path.read_bytes()
            entry: dict[str, Any] = {"rfilename": name}
            if request.query.get("blobs") == "true":
                entry.update(size=len(data), blobId=_git_blob_id(data))
                if len(data) >= LFS_FROM:
                    entry["lfs"] = {
                        "sha256": self._sha256[name],
                        "size": len(data),
                        "pointerSize": 134,
                    }
            siblings.append(entry)
        return web.json_response(
            {"id": self.repo, "sha": COMMIT, "private": False, "siblings": siblings}
        )

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self._check_repo(request)
        path = self._files.get(request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound"})
        data = path.read_bytes()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{_git_blob_id(data)}"'}
        if len(data) >= LFS_FROM:
            sha = self._sha256[request.match_info["path"]]
            headers.update(
                {
                    "Location": f"http://localhost:{self.port}/store/{sha}",
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(data)),
                }
            )
            return web.Response(status=302, headers=headers)
        return await self._send(request, data, headers)

    async def _store(self, request: web.Request) -> web.StreamResponse:
        by_sha = {sha: name for name, sha in self._sha256.items()}
        name = by_sha.get(request.match_info["sha"])
        if name is None:
            raise web.HTTPNotFound()
        if self._down:
            raise web.HTTPServiceUnavailable()
        return await self._send(request, self._files[name].read_bytes(), {})

    async def _send(
        self, request: web.Request, data: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        start, status = 0, 200
        wanted = request.headers.get("Range", "")
        if wanted.startswith("bytes=") and wanted.endswith("-"):
            start, status = int(wanted[6:-1]), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers.update({"Content-Length": str(len(data) - start), "Accept-Ranges": "bytes"})
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        cut = self._cut if request.path.startswith("/store/") else None
        end = len(data) if cut is None else min(len(data), start + cut)
        for at in range(start, end, self.chunk):
            await response.write(data[at : min(at + self.chunk, end)])
        if cut is not None:
            self._cut, self._down = None, True
            assert request.transport is not None
            request.transport.abort()  # the network goes away mid-file
            return response
        await response.write_eof()
        return response


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
