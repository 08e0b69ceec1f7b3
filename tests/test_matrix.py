"""The Matrix channel against a real homeserver: Synapse on loopback (tests/synapse.py), one per
module, a new bot and new people per test. The people use the client-server API directly
(httpx), as any other client would; the bot is `msgvoice run` as users run it."""

from __future__ import annotations

import json
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from msgvoice.net import tls
from msgvoice.speech.convert import decode, describe
from tests.conftest import run_msgvoice
from tests.daemon_util import DaemonProcess, free_port
from tests.synapse import SYNAPSE_PYTHON, Homeserver, User, homeserver

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not SYNAPSE_PYTHON.exists(), reason="scripts/test builds .venv-synapse; run it first"
    ),
]
LONG = "今天天气很好，我们下午一起去公园散步吧。" * 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homeserver]:
    with homeserver(tmp_path_factory.mktemp("synapse")) as running:
        yield running


class Person:
    """Someone on the homeserver, through the client-server API."""

    def __init__(self, server: Homeserver, user: User) -> None:
        self.user_id = user.user_id
        self.http = httpx.Client(
            base_url=f"{server.url}/_matrix/client",
            headers={"Authorization": f"Bearer {user.access_token}"},
            timeout=30,
            verify=tls(),
        )

    def create_room(self, *invite: str, **extra: Any) -> str:
        body = {"invite": list(invite), "preset": "private_chat", **extra}
        answer = self.http.post("/v3/createRoom", json=body)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["room_id"])

    def send(self, room: str, content: dict[str, Any], kind: str = "m.room.message") -> str:
        path = f"/v3/rooms/{quote(room)}/send/{kind}/{secrets.token_hex(8)}"
        answer = self.http.put(path, json=content)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["event_id"])

    def say(self, room: str, text: str) -> str:
        return self.send(room, {"msgtype": "m.text", "body": text})

    def events(self, room: str) -> list[dict[str, Any]]:
        """The room's events, oldest first."""
        answer = self.http.get(
            f"/v3/rooms/{quote(room)}/messages", params={"dir": "b", "limit": 500}
        )
        return list(reversed(answer.json()["chunk"]))

    def members(self, room: str) -> set[str]:
        return set(self.http.get(f"/v3/rooms/{quote(room)}/joined_members").json()["joined"])

    def wait_for(self, room: str, sender: str, count: int, msgtype: str = "m.audio",
                 within: float = 60) -> list[dict[str, Any]]:  # fmt: skip
        """Wait until `sender` has posted `count` messages of `msgtype` in `room`; their
        contents, oldest first."""
        deadline = time.monotonic() + within
        while True:
            found = [
                e["content"]
                for e in self.events(room)
                if e["sender"] == sender and e["content"].get("msgtype") == msgtype
            ]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"{len(found)} of {count} {msgtype} arrived"
            time.sleep(0.05)

    def wait_joined(self, room: str, user_id: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while user_id not in self.members(room):
            assert time.monotonic() < deadline, f"{user_id} did not join {room}"
            time.sleep(0.05)

    def download(self, mxc: str) -> bytes:
        server_name, media_id = mxc.removeprefix("mxc://").split("/")
        answer = self.http.get(f"/v1/media/download/{server_name}/{media_id}")
        assert answer.status_code == 200, answer.text
        return answer.content


def bot_daemon(state: Path, server: Homeserver, bot: User, **env: str) -> DaemonProcess:
    return DaemonProcess(
        state,
        MSGVOICE_MATRIX_ENABLED="true",
        MSGVOICE_MATRIX_HOMESERVER=server.url,
        MSGVOICE_MATRIX_USER_ID=bot.user_id,
        MSGVOICE_MATRIX_PASSWORD=bot.password,
        MSGVOICE_MATRIX_SYNC_TIMEOUT_S="5",
        **env,
    )


def people(server: Homeserver, *names: str) -> list[Any]:
    """A bot account and people, with names new to this homeserver."""
    tag = secrets.token_hex(3)
    bot = server.register(f"bot{tag}")
    return [bot, *(Person(server, server.register(f"{name}{tag}")) for name in names)]


def log_of(state: Path) -> str:
    return Path(f"{state}.log").read_text()


def outbox(daemon: DaemonProcess, room: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{daemon.url}/v1/chats/{quote('mx:' + room)}/outbox", timeout=10, verify=tls()
    )
    return list(answer.json()["items"])


def test_tts_arrives_as_the_voice_message_element_draws(server: Homeserver, tmp_path: Path) -> None:
    """`/tts` in a room the bot was invited to: an m.audio voice message with Element's fields
    (info, MSC1767 file/audio with a waveform, MSC3245's voice marker) whose media downloads
    and decodes as OGG/Opus 48 kHz of the duration it claims; `/mode` gets a notice."""
    bot, alice = people(server, "alice")
    daemon = bot_daemon(tmp_path / "state", server, bot).start()
    try:
        room = alice.create_room(bot.user_id)
        alice.wait_joined(room, bot.user_id)
        alice.say(room, "/tts 开心：今天天气真好，我们去散步吧")
        [voice] = alice.wait_for(room, bot.user_id, 1)
        alice.say(room, "/mode")
        [notice] = alice.wait_for(room, bot.user_id, 1, "m.notice")
    finally:
        assert daemon.signal(signal.SIGTERM) == 0
    assert voice["org.matrix.msc3245.voice"] == {}
    info, audio = voice["info"], voice["org.matrix.msc1767.audio"]
    assert info["mimetype"] == "audio/ogg" and audio["duration"] == info["duration"]
    assert voice["org.matrix.msc1767.file"]["url"] == voice["url"]
    waveform = audio["waveform"]
    assert 30 <= len(waveform) <= 120 and max(waveform) == 1024 and min(waveform) >= 0
    data = alice.download(voice["url"])
    assert len(data) == info["size"]
    note = tmp_path / "note.ogg"
    note.write_bytes(data)
    samples, rate = decode(note)
    assert describe(note) == ("ogg", "opus", 48_000)
    assert abs(len(samples) / rate * 1000 - info["duration"]) < 50 and info["duration"] > 1000
    assert "语音模式" in notice["body"]


def test_a_restart_between_two_messages_neither_repeats_nor_misses(
    server: Homeserver, tmp_path: Path
) -> None:
    """A message sent while msgvoice is down is answered after the restart, the one before is
    not answered again, and the bot keeps its one device (the session is reused)."""
    bot, alice = people(server, "alice")
    state = tmp_path / "state"
    daemon = bot_daemon(state, server, bot).start()
    room = alice.create_room(bot.user_id)
    alice.wait_joined(room, bot.user_id)
    alice.say(room, "/tts 第一条")
    alice.wait_for(room, bot.user_id, 1)
    assert daemon.signal(signal.SIGTERM) == 0
    alice.say(room, "/tts 第二条，在重启的时候发的")
    daemon = bot_daemon(state, server, bot).start()
    try:
        alice.wait_for(room, bot.user_id, 2)
        alice.say(room, "/tts 第三条")
        voices = alice.wait_for(room, bot.user_id, 3)
    finally:
        assert daemon.signal(signal.SIGTERM) == 0
    assert len(voices) == 3  # a replay of the first or second would have come before the third
    admin = server.admin()
    devices = httpx.get(
        f"{server.url}/_synapse/admin/v2/users/{bot.user_id}/devices",
        headers={"Authorization": f"Bearer {admin.access_token}"},
        timeout=10,
        verify=tls(),
    ).json()["devices"]
    assert sum(d.get("display_name") == "msgvoice" for d in devices) == 1


def test_a_room_the_bot_was_kicked_from_never_holds_another(
    server: Homeserver, tmp_path: Path
) -> None:
    """The bot is kicked while it speaks a long text there: that voice note is refused for
    good (M_FORBIDDEN, in the journal and the log) and the other room is answered."""
    bot, alice = people(server, "alice")
    daemon = bot_daemon(tmp_path / "state", server, bot).start()
    try:
        kicked, other = alice.create_room(bot.user_id), alice.create_room(bot.user_id)
        alice.wait_joined(kicked, bot.user_id)
        alice.wait_joined(other, bot.user_id)
        alice.say(kicked, f"/tts {LONG}")
        daemon.wait_health(lambda h: bool(h["running_jobs"]))
        answer = alice.http.post(
            f"/v3/rooms/{quote(kicked)}/kick", json={"user_id": bot.user_id, "reason": "test"}
        )
        assert answer.status_code == 200, answer.text
        alice.say(other, "/tts 你好")
        alice.wait_for(other, bot.user_id, 1)
        deadline = time.monotonic() + 60
        while not (failed := [i for i in outbox(daemon, kicked) if i["state"] == "failed"]):
            assert time.monotonic() < deadline, outbox(daemon, kicked)
            time.sleep(0.05)
    finally:
        assert daemon.signal(signal.SIGTERM) == 0
    assert len(failed) == 1 and "M_FORBIDDEN" in failed[0]["error"]
    assert "refused for good" in log_of(tmp_path / "state")


def test_a_homeserver_outage_is_waited_out_and_the_voice_note_arrives_once(
    tmp_path: Path,
) -> None:
    """The homeserver goes down while a voice note is made: sync and delivery retry with
    back-off (warnings, no traceback), and once it is back the note arrives, once."""
    with homeserver(tmp_path / "synapse") as server:
        bot, alice = people(server, "alice")
        state = tmp_path / "state"
        daemon = bot_daemon(state, server, bot).start()
        try:
            room = alice.create_room(bot.user_id)
            alice.wait_joined(room, bot.user_id)
            alice.say(room, f"/tts {LONG}")
            daemon.wait_health(lambda h: bool(h["running_jobs"]))
            server.stop()
            deadline = time.monotonic() + 60
            while "failed, retrying" not in log_of(state):
                assert time.monotonic() < deadline, log_of(state)
                time.sleep(0.05)
            server.start()
            alice.wait_for(room, bot.user_id, 1)
            alice.say(room, "/tts 又好了")
            voices = alice.wait_for(room, bot.user_id, 2)
        finally:
            assert daemon.signal(signal.SIGTERM) == 0
    assert len(voices) == 2 and "Traceback" not in log_of(state)


def test_rate_limited_voice_notes_wait_retry_after_and_arrive_once(
    server: Homeserver, tmp_path: Path
) -> None:
    """A bot under a Synapse message limit (its own, set by the admin API: burst 3, then 1/s,
    so the test waits seconds, not the default limit's 5 s a note): the 4th and later voice
    notes get M_LIMIT_EXCEEDED, wait the server's retry_after_ms, and every one arrives once."""
    tag = secrets.token_hex(3)
    bot = server.register(f"bot{tag}", unlimited=False)
    server.limit(bot.user_id, per_second=1, burst=3)
    alice = Person(server, server.register(f"alice{tag}"))
    state = tmp_path / "state"
    daemon = bot_daemon(state, server, bot).start()
    try:
        room = alice.create_room(bot.user_id)
        alice.wait_joined(room, bot.user_id)
        for n in range(6):
            alice.say(room, f"/tts 第{n + 1}条")
        alice.wait_for(room, bot.user_id, 6, within=60)
    finally:
        assert daemon.signal(signal.SIGTERM) == 0
    voices = alice.wait_for(room, bot.user_id, 6)  # the bot is stopped: all it sent is there
    assert len(voices) == 6
    assert "M_LIMIT_EXCEEDED" in log_of(state) and "Traceback" not in log_of(state)


def test_an_encrypted_room_is_told_once_that_the_bot_cannot_read_it(
    server: Homeserver, tmp_path: Path
) -> None:
    """In an end-to-end encrypted room the bot says once (in the room, in the log) that it
    cannot read encrypted messages; later encrypted messages get nothing more."""
    bot, alice = people(server, "alice")
    state = tmp_path / "state"
    daemon = bot_daemon(state, server, bot).start()
    encryption = {"type": "m.room.encryption", "state_key": "", "content": {
        "algorithm": "m.megolm.v1.aes-sha2"}}  # fmt: skip
    try:
        secret = alice.create_room(bot.user_id, initial_state=[encryption])
        plain = alice.create_room(bot.user_id)
        alice.wait_joined(secret, bot.user_id)
        alice.wait_joined(plain, bot.user_id)
        [notice] = alice.wait_for(secret, bot.user_id, 1, "m.notice")
        ciphertext = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnB...",
                      "sender_key": "k", "session_id": "s", "device_id": "D"}  # fmt: skip
        for _ in range(2):
            alice.send(secret, ciphertext, "m.room.encrypted")
        alice.say(plain, "/tts 你好")  # answered after the encrypted ones were read
        alice.wait_for(plain, bot.user_id, 1)
        told = outbox(daemon, secret)
    finally:
        assert daemon.signal(signal.SIGTERM) == 0
    assert "加密" in notice["body"]
    assert len(told) == 1
    assert log_of(state).count("is end-to-end encrypted") == 1


def test_invites_from_people_not_allowed_are_left_alone(server: Homeserver, tmp_path: Path) -> None:
    """With matrix.allow naming alice, mallory's invite is not joined; alice's is."""
    bot, alice, mallory = people(server, "alice", "mallory")
    state = tmp_path / "state"
    daemon = bot_daemon(state, server, bot, MSGVOICE_MATRIX_ALLOW=alice.user_id).start()
    try:
        strange = mallory.create_room(bot.user_id)
        room = alice.create_room(bot.user_id)
        alice.wait_joined(room, bot.user_id)
        alice.say(room, "/tts 你好")
        alice.wait_for(room, bot.user_id, 1)
    finally:
        assert daemon.signal(signal.SIGTERM) == 0
    assert bot.user_id not in mallory.members(strange)
    assert "left alone (not in matrix.allow)" in log_of(state)


def test_refused_credentials_stop_the_channel_not_the_daemon(
    server: Homeserver, tmp_path: Path
) -> None:
    """A wrong password: one log line naming the account and the fix; the daemon serves on.
    doctor says the same of a wrong access token, and passes a right one."""
    bot = server.register(f"bot{secrets.token_hex(3)}")
    state = tmp_path / "state"
    wrong = bot_daemon(state, server, replace(bot, password="wrong")).start()
    try:
        deadline = time.monotonic() + 30
        while "matrix channel stopped" not in log_of(state):
            assert time.monotonic() < deadline, log_of(state)
            time.sleep(0.05)
        assert httpx.get(wrong.url + "/healthz", timeout=5, verify=tls()).status_code == 200
    finally:
        assert wrong.signal(signal.SIGTERM) == 0
    assert bot.user_id in log_of(state) and "Traceback" not in log_of(state)

    def doctor(token: str) -> dict[str, Any]:
        env = {
            "MSGVOICE_MATRIX_ENABLED": "true",
            "MSGVOICE_MATRIX_HOMESERVER": server.url,
            "MSGVOICE_MATRIX_ACCESS_TOKEN": token,
            "MSGVOICE_HTTP_PORT": str(free_port()),
        }
        checks = json.loads(run_msgvoice("doctor", "--json", env=env).stdout)["checks"]
        return {c["name"]: c for c in checks}["matrix"]

    good, bad = doctor(bot.access_token), doctor("syt_not_a_token")
    assert good["status"] == "pass" and bot.user_id in good["message"]
    assert bad["status"] == "error" and "M_UNKNOWN_TOKEN" in bad["message"] and bad["fix"]
