"""The state dir holds every chat's text and every voice note: it is its owner's alone."""

from __future__ import annotations

import logging
import signal
import stat
from pathlib import Path

import httpx
import pytest

from msgvoice.net import tls
from tests.conftest import run_msgvoice
from tests.daemon_util import DaemonProcess, running, wait_job


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_state_dir_and_everything_in_it_is_private(tmp_path: Path) -> None:
    """`msgvoice run` as a user runs it (umask 022 outside): the state dir, the journal, its
    WAL, the audio folder and a voice note are readable by their owner only."""
    state = tmp_path / "state"
    daemon = DaemonProcess(state).start()
    try:
        posted = httpx.post(
            daemon.url + "/v1/messages", json={"chat_id": "p", "text": "/tts 你好"}, verify=tls()
        )
        job_id = posted.json()["jobs"][0]
        job = httpx.get(f"{daemon.url}/v1/jobs/{job_id}?wait=30", timeout=40, verify=tls()).json()
        assert job["state"] == "done"
    finally:
        assert daemon.signal(signal.SIGTERM) == 0
    assert mode(state) == 0o700 and mode(state / "audio") == 0o700
    assert mode(state / "msgvoice.sqlite3") == 0o600
    notes = list((state / "audio").iterdir())
    assert notes and all(mode(note) == 0o600 for note in notes)


async def test_an_existing_state_dir_readable_by_others_is_tightened_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state dir left 0755 with a 0644 journal by an older version: tightened at start with
    one log line; a private one is left alone without a word."""
    state = tmp_path / "state"
    (state / "audio").mkdir(parents=True)
    (state / "audio" / "old.ogg").write_bytes(b"x")
    for path, bits in (
        (state, 0o755),
        (state / "audio", 0o755),
        (state / "audio" / "old.ogg", 0o644),
    ):
        path.chmod(bits)
    with caplog.at_level(logging.WARNING):
        async with running(state) as (_, client):
            posted = await client.post("/v1/messages", json={"chat_id": "q", "text": "/tts 好"})
            await wait_job(client, posted.json()["jobs"][0])
        async with running(state):
            pass
    assert mode(state) == 0o700 and mode(state / "audio") == 0o700
    assert mode(state / "audio" / "old.ogg") == 0o600
    lines = [r for r in caplog.records if "readable by other users" in r.getMessage()]
    assert len(lines) == 1


def test_say_keeps_the_users_own_file_as_its_folder_is(tmp_path: Path) -> None:
    """`say -o` into the user's own folder gives the file that folder's usual mode (0644 in a
    0755 folder), not the state dir's privacy."""
    folder = tmp_path / "out"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    done = run_msgvoice("say", "/tts 你好", "-o", str(folder / "hello.ogg"))
    assert done.returncode == 0, done.stderr
    assert mode(folder / "hello.ogg") == 0o644
