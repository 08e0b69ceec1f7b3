"""Every bad request to the HTTP channel is a 4xx with an error message, and the daemon keeps
serving afterwards; tokens and the loopback rule guard exposure."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from msgvoice.config import ConfigError
from tests.conftest import until
from tests.daemon_util import running, wait_job

BAD: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("POST", "/v1/messages", {"content": b"{not json"}, 400, "not valid JSON"),
    ("POST", "/v1/messages", {"json": ["a", "list"]}, 400, "JSON object"),
    ("POST", "/v1/messages", {"json": {"text": "/tts 好"}}, 400, "missing field 'chat_id'"),
    ("POST", "/v1/messages", {"json": {"chat_id": "c"}}, 400, "missing field 'text'"),
    ("POST", "/v1/messages", {"json": {"chat_id": 5, "text": "hi"}}, 400, "must be a string"),
    ("POST", "/v1/messages", {"json": {"chat_id": "c", "text": None}}, 400, "must be a string"),
    ("POST", "/v1/messages", {"json": {"chat_id": "c", "text": "  "}}, 400, "is empty"),
    ("POST", "/v1/messages", {"json": {"chat_id": "", "text": "hi"}}, 400, "is empty"),
    (
        "POST",
        "/v1/messages",
        {"json": {"chat_id": "c", "text": "hi", "sender": []}},
        400,
        "'sender' must be a string",
    ),
    ("POST", "/v1/messages", {"json": {"chat_id": "c", "text": "长" * 501}}, 413, "limit 500"),
    (
        "POST",
        "/v1/messages",
        {"content": b'{"chat_id": "c", "text": "' + b"x" * 5000 + b'"}'},
        413,
        "Too Large",
    ),
    ("POST", "/v1/chats/c/replies", {"json": {}}, 400, "missing field 'text'"),
    ("POST", "/v1/chats/c/replies", {"json": {"text": 3}}, 400, "must be a string"),
    ("GET", "/v1/jobs/nope", {}, 404, "no such job"),
    ("GET", "/v1/chats/never-seen/outbox", {}, 404, "no such chat"),
    ("GET", "/v1/chats/c/outbox?after=x", {}, 400, "after must be a sequence number"),
    ("GET", "/v1/chats/c/outbox?after=99999999999999999999", {}, 400, "after must be a seq"),
    ("GET", "/v1/chats/c/outbox?after=-1", {}, 400, "after must be a sequence number"),
    ("GET", "/v1/chats/c/outbox?wait=soon", {}, 400, "wait must be seconds from 0 to 60"),
    ("GET", "/v1/chats/c/outbox?wait=-1", {}, 400, "wait must be seconds"),
    ("GET", "/v1/chats/c/outbox?wait=61", {}, 400, "wait must be seconds"),
    ("GET", "/v1/chats/c/outbox?wait=nan", {}, 400, "wait must be seconds"),
    ("GET", "/v1/chats/c/outbox?wait=inf", {}, 400, "wait must be seconds"),
    ("GET", "/v1/jobs/nope?wait=1e309", {}, 400, "wait must be seconds"),
    ("GET", "/v1/audio/..%2F..%2Fmsgvoice.sqlite3", {}, 404, "no such audio"),
    ("GET", "/v1/audio/msgvoice.sqlite3", {}, 404, "no such audio"),
    ("GET", "/v1/audio/0123456789abcdef.ogg", {}, 404, "no such audio"),
    ("GET", "/v1/nothing", {}, 404, "Not Found"),
    ("DELETE", "/v1/messages", {}, 405, "Method Not Allowed"),
]

LIMITS = {"MSGVOICE_TEXT_MAX_CHARS": "500", "MSGVOICE_HTTP_MAX_BODY_BYTES": "4096"}


async def test_bad_requests_are_4xx_and_the_daemon_keeps_serving(clean_env: Path) -> None:
    """Bad JSON, missing fields, wrong types, oversize texts and bodies, unknown jobs and chats,
    path tricks: each a 4xx with {"error": …}; afterwards a real job still works."""
    async with running(clean_env, **LIMITS) as (_, client):
        await client.post("/v1/messages", json={"chat_id": "c", "text": "/help"})
        for method, path, kwargs, status, message in BAD:
            answer = await client.request(method, path, **kwargs)
            assert answer.status_code == status, (path, kwargs, answer.text)
            assert message in answer.json()["error"], (path, answer.json())
            assert (await client.get("/healthz")).status_code == 200
        job = (await client.post("/v1/messages", json={"chat_id": "c", "text": "/tts 好"})).json()
        assert (await wait_job(client, job["jobs"][0]))["state"] == "done"


async def test_outbox_after_returns_only_newer_items(clean_env: Path) -> None:
    """`after=SEQ` pages through a chat's outbox; the JSON carries Chinese as it is."""
    async with running(clean_env) as (_, client):
        for text in ("/help", "/mode", "/mode voice on"):
            await client.post("/v1/messages", json={"chat_id": "o", "text": text})
        items = (await client.get("/v1/chats/o/outbox")).json()["items"]
        assert [i["seq"] for i in items] == [1, 2, 3]
        assert all(i["created_at"].endswith("Z") for i in items)
        later = await client.get("/v1/chats/o/outbox?after=2")
        assert [i["text"] for i in later.json()["items"]] == ["已设置语音模式：文字+语音"]
        assert "已设置语音模式" in later.text  # readable in curl, not \u-escaped


async def test_a_waiting_request_answers_when_the_voice_note_is_ready(clean_env: Path) -> None:
    """`?wait=S` holds the outbox or job request until there is something new (a bot needs no
    busy polling); with nothing new it answers empty after S seconds."""
    async with running(clean_env) as (parts, client):
        await client.post("/v1/messages", json={"chat_id": "w", "text": "/help"})
        news = asyncio.create_task(client.get("/v1/chats/w/outbox?after=1&wait=30"))
        await until(lambda: parts.http.waiters == 1)
        job_id = (
            await client.post("/v1/messages", json={"chat_id": "w", "text": "/tts 好"})
        ).json()["jobs"][0]
        job = asyncio.create_task(client.get(f"/v1/jobs/{job_id}?wait=30"))
        items = (await news).json()["items"]
        assert [i["kind"] for i in items] == ["audio"] and items[0]["job_id"] == job_id
        assert (await job).json()["state"] == "done"
        started = time.monotonic()
        quiet = await client.get("/v1/chats/w/outbox?after=2&wait=0.3")
        assert quiet.json() == {"items": []} and time.monotonic() - started >= 0.3
        assert parts.http.waiters == 0


async def test_waiting_requests_are_answered_when_the_channel_stops(clean_env: Path) -> None:
    async with running(clean_env) as (parts, client):
        await client.post("/v1/messages", json={"chat_id": "s", "text": "/help"})
        held = asyncio.create_task(client.get("/v1/chats/s/outbox?after=1&wait=60"))
        await until(lambda: parts.http.waiters == 1)
        await parts.http.stop()
        answer = await held
        assert answer.status_code == 200 and answer.json() == {"items": []}


async def test_token_is_required_when_configured(clean_env: Path) -> None:
    """With a token set, requests without the right bearer get 401; /healthz stays open."""
    async with running(clean_env, MSGVOICE_HTTP_TOKEN="s3cret") as (_, client):
        body = {"chat_id": "c", "text": "/help"}
        assert (await client.post("/v1/messages", json=body)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.post("/v1/messages", json=body, headers=wrong)).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert (await client.post("/v1/messages", json=body, headers=right)).status_code == 202
        assert (await client.get("/healthz")).status_code == 200


async def test_non_loopback_bind_without_token_is_refused(clean_env: Path) -> None:
    """Binding to all interfaces needs a token: the daemon refuses to start without one."""
    with pytest.raises(ConfigError, match="not loopback"):
        async with running(clean_env, MSGVOICE_HTTP_HOST="0.0.0.0"):
            pass


async def test_allow_list_turns_away_other_chats(clean_env: Path) -> None:
    """With http.allow set, other chats get 403 and nothing lands in their outbox."""
    async with running(clean_env, MSGVOICE_HTTP_ALLOW="friend") as (_, client):
        stranger = await client.post("/v1/messages", json={"chat_id": "x", "text": "/tts 好"})
        assert stranger.status_code == 403
        assert (await client.get("/v1/chats/x/outbox")).status_code == 404
        by_sender = await client.post(
            "/v1/messages", json={"chat_id": "g", "text": "/help", "sender": "friend"}
        )
        assert by_sender.status_code == 202
        reply = await client.post("/v1/chats/x/replies", json={"text": "hi"})
        assert reply.status_code == 403


async def test_doctor_endpoint_carries_live_worker_facts(clean_env: Path) -> None:
    """GET /v1/doctor has the doctor shape with the running worker's pid and counters."""
    async with running(clean_env) as (daemon, client):
        report = (await client.get("/v1/doctor")).json()
        assert report["status"] in ("pass", "warning")
        assert report["worker"]["pid"] == daemon.kit.supervisor.pid
        assert set(report["worker"]["restarts"]) == {"rss", "hard_rss", "timeout", "crash", "jobs"}
        assert {c["name"] for c in report["checks"]} >= {"config", "state_dir", "daemon"}


async def test_port_in_use_is_a_clear_error(clean_env: Path) -> None:
    """A second daemon on a taken port stops with a message naming the port."""
    async with running(clean_env) as (daemon, _):
        port = str(daemon.http.port)
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with running(clean_env / "other", MSGVOICE_HTTP_PORT=port):
                pass
