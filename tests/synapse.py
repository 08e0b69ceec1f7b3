"""A real Matrix homeserver for the tests: Synapse (matrix-synapse from PyPI, in its own venv
.venv-synapse, which scripts/test builds), on sqlite and loopback, started and stopped here.

The config is written here rather than by `--generate-config` (which costs seconds): a client
listener only, no federation, no key servers, and Synapse's own rate limits (its defaults, but
for logins per address: every bot here logs in from 127.0.0.1), so a test meets them as a bot
on a real server does; users whose message limits would only slow a test down are exempted one
by one with Synapse's admin API (`override_ratelimit`). Users register
through the shared-secret registration API, as `register_new_matrix_user` does (Synapse's docs,
admin_api/register_api: a nonce, then an HMAC-SHA1 of nonce, user, password and
"admin"/"notadmin" separated by NULs, keyed with `registration_shared_secret`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from msgvoice.net import tls
from tests.conftest import REPO
from tests.daemon_util import free_port

SYNAPSE_PYTHON = REPO / ".venv-synapse" / "bin" / "python"
SECRET = "msgvoice-tests"

CONFIG = """\
server_name: "localhost"
pid_file: {root}/homeserver.pid
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: {root}/homeserver.db
media_store_path: {root}/media
registration_shared_secret: "{secret}"
report_stats: false
signing_key_path: {root}/signing.key
trusted_key_servers: []
suppress_key_server_warning: true
enable_metrics: false
# Every bot of the module logs in from 127.0.0.1; on a real server each bot has an address of
# its own, so the per-address login limit (5 at once, then one per 5 minutes) is raised.
rc_login:
  address: {{per_second: 100, burst_count: 100}}
"""


@dataclass(frozen=True)
class User:
    user_id: str
    password: str
    access_token: str


class Homeserver:
    """One Synapse process under `root`."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, within: float = 60) -> Homeserver:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "homeserver.yaml"
        config.write_text(CONFIG.format(root=self.root, port=self.port, secret=SECRET))
        key = self.root / "signing.key"
        if not key.exists():  # a restart keeps the server's key
            seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")  # signedjson's format
            key.write_text(f"ed25519 a_test {seed}\n")
        log = open(self.root / "homeserver.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.proc = subprocess.Popen(
            [str(SYNAPSE_PYTHON), "-m", "synapse.app.homeserver", "-c", str(config)],
            cwd=self.root,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(
                    f"{self.url}/_matrix/client/versions", timeout=1, verify=tls()
                ).is_success:
                    return self
            assert self.proc.poll() is None, (self.root / "homeserver.log").read_text()[-3000:]
            time.sleep(0.05)
        raise AssertionError("synapse did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def register(self, name: str, *, admin: bool = False, unlimited: bool = True) -> User:
        """A new user (shared-secret registration); `unlimited` exempts it from rate limits."""
        password = secrets.token_hex(8)
        url = f"{self.url}/_synapse/admin/v1/register"
        nonce = httpx.get(url, timeout=10, verify=tls()).json()["nonce"]
        message = "\0".join([nonce, name, password, "admin" if admin else "notadmin"])
        mac = hmac.new(SECRET.encode(), message.encode(), hashlib.sha1).hexdigest()
        body = {"nonce": nonce, "username": name, "password": password, "admin": admin}
        answer = httpx.post(url, json={**body, "mac": mac}, timeout=30, verify=tls())
        assert answer.status_code == 200, answer.text
        user = User(answer.json()["user_id"], password, answer.json()["access_token"])
        if unlimited:
            self.unlimit(user.user_id)
        return user

    def admin(self) -> User:
        """The homeserver's admin account (made on first use)."""
        if not hasattr(self, "_admin"):
            self._admin = self.register("admin", admin=True, unlimited=False)
            self.unlimit(self._admin.user_id)
        return self._admin

    def unlimit(self, user_id: str) -> None:
        """Exempt a user from rate limits (admin API override_ratelimit, 0 = none)."""
        self.limit(user_id, 0, 0)

    def limit(self, user_id: str, per_second: float, burst: int) -> None:
        """Set a user's own message limit (admin API override_ratelimit)."""
        admin = self.admin()
        answer = httpx.post(
            f"{self.url}/_synapse/admin/v1/users/{user_id}/override_ratelimit",
            json={"messages_per_second": per_second, "burst_count": burst},
            headers={"Authorization": f"Bearer {admin.access_token}"},
            timeout=10,
            verify=tls(),
        )
        assert answer.status_code == 200, answer.text


@contextlib.contextmanager
def homeserver(root: Path) -> Iterator[Homeserver]:
    server = Homeserver(root).start()
    try:
        yield server
    finally:
        server.stop()
