"""A stand-in for `imsg`, after steipete/imsg's own text: `docs/rpc.md` (JSON-RPC 2.0, one
object per line; notifications without `id`; stderr for people), `RPCServer.swift` and
`RPCServer+Support.swift` (errors are `{"code", "message", "data"}`: -32601 "Method not found",
-32602 "Invalid params" with the reason in `data`, -32603 "Internal error", whose `data` for a
file it cannot find is "Attachment not found"),
`RPCServer+Handlers.swift` (a failed watch is a `{"method": "error", "params":
{"subscription", "error": {"message"}}}` notification, and imsg keeps running),
`RPCStartupErrorServer.swift` (without Full Disk Access every request gets -32603 with the
permission text), `RPCServer+BridgeMessageHandlers.swift` (`send.attachment` with `as_voice`
needs the IMCore bridge) and `StatusCommand.swift` (`imsg status --json`: `advanced_features`
is only a lock file's presence; `v2_ready` and `bridge_version` come from a live probe).

`fake_imsg.py rpc` serves JSON-RPC; `fake_imsg.py status --json` prints the status. State lives
in $FAKE_IMSG_DIR: the test appends incoming messages (imsg's Message objects) to inbox.jsonl;
`chats.list` lists their chats; `watch.subscribe {since_rowid}` streams those after the rowid
as `message` notifications and keeps watching; `send` and `send.attachment` params go to
sent.jsonl, and sent messages show in `messages.history` (`is_from_me`, `text`, `attachments`
with `transfer_name`). Files steer it:
- `die`: the next send kills the process before answering;
- `watch-fails`: the next watch reports an `error` notification and stops (imsg stays up);
- `slow-send`: the next send goes out but its answer comes 10 s late;
- `no-fda`: startup without Full Disk Access;
- `bridge`: the IMCore bridge is running; `stale-bridge`: its lock file is left but it does
  not answer (`advanced_features` true, `v2_ready` false);
- `bridge-breaks`: the next `send.attachment` finds the bridge gone (and it stays gone);
- `attachment-gone`: the next send with a file answers "Attachment not found".
Chat 666 does not exist (send answers -32602 "unknown chat_id 666").
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

STATE = Path(os.environ["FAKE_IMSG_DIR"])
UNKNOWN_CHAT = 666
NO_FDA = (
    "permissionDenied: unable to open database file\n\n⚠️  Permission Error: Cannot access "
    "Messages database\n\nThe Messages database at ~/Library/Messages/chat.db requires Full "
    "Disk Access permission."
)
_write = threading.Lock()


def emit(message: dict[str, Any]) -> None:
    with _write:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", **message}, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def error(req_id: Any, code: int, message: str, data: str | None = None) -> None:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    emit({"id": req_id, "error": body})


def take(flag: str) -> bool:
    """Whether a steering file is there (it is used up)."""
    path = STATE / flag
    if path.exists():
        path.unlink()
        return True
    return False


def watch(subscription: int, since: int) -> None:
    if take("watch-fails"):
        time.sleep(0.2)
        failure = {"message": "SQLite error 10: disk I/O error"}
        emit({"method": "error", "params": {"subscription": subscription, "error": failure}})
        return
    inbox = STATE / "inbox.jsonl"
    seen = since
    while True:
        lines = inbox.read_text(encoding="utf-8").splitlines() if inbox.exists() else []
        for line in lines:
            message = json.loads(line)
            if message["id"] > seen:
                seen = message["id"]
                params = {"subscription": subscription, "message": message}
                emit({"method": "message", "params": params})
        time.sleep(0.05)


def log_line(name: str, record: dict[str, Any]) -> None:
    with (STATE / name).open("a", encoding="utf-8") as log:
        log.write(json.dumps(record, ensure_ascii=False) + "\n")


def lines(name: str) -> list[dict[str, Any]]:
    path = STATE / name
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def send(req_id: Any, method: str, params: dict[str, Any]) -> None:
    if method == "send.attachment" and not (STATE / "bridge").exists():
        return error(req_id, -32603, "Internal error", "IMCore bridge is not running")
    if method == "send.attachment" and take("bridge-breaks"):
        (STATE / "bridge").unlink()
        return error(req_id, -32603, "Internal error", "IMCore bridge is not running")
    if "file" in params and take("attachment-gone"):
        return error(req_id, -32603, "Internal error", f"Attachment not found: {params['file']}")
    if take("die"):
        os._exit(1)
    if params.get("chat_id") == UNKNOWN_CHAT:
        return error(req_id, -32602, "Invalid params", f"unknown chat_id {UNKNOWN_CHAT}")
    if "file" in params and not Path(params["file"]).is_file():
        return error(req_id, -32602, "Invalid params", "file not found")
    slow = take("slow-send")
    now = datetime.datetime.now(datetime.UTC).isoformat()
    log_line("sent.jsonl", {"method": method, **params, "created_at": now})
    if slow:
        time.sleep(10)
    emit({"id": req_id, "result": {"ok": True}})
    return None


def history(req_id: Any, params: dict[str, Any]) -> None:
    start = params.get("start") or ""
    mine = [
        {
            "chat_id": s["chat_id"],
            "is_from_me": True,
            "text": s.get("text") or "",
            "created_at": s["created_at"],
            "attachments": (
                [{"filename": s["file"], "transfer_name": Path(s["file"]).name}]
                if "file" in s
                else []
            ),
        }
        for s in lines("sent.jsonl")
        if s["chat_id"] == params.get("chat_id") and s["created_at"] >= start
    ]
    log_line("history.jsonl", params)
    emit({"id": req_id, "result": {"messages": mine[-int(params.get("limit", 50)) :]}})


def rpc() -> int:
    log_line("starts.jsonl", {"pid": os.getpid()})
    print("imsg rpc: listening on stdin", file=sys.stderr, flush=True)
    no_fda = (STATE / "no-fda").exists()
    subscriptions = 0
    for line in sys.stdin:
        request = json.loads(line)
        req_id, method, params = request.get("id"), request.get("method"), request.get("params", {})
        if no_fda:
            error(req_id, -32603, "Internal error", NO_FDA)
        elif method == "watch.subscribe":
            subscriptions += 1
            log_line("subscribes.jsonl", params)
            emit({"id": req_id, "result": {"subscription": subscriptions}})
            since = params.get("since_rowid", 0)
            threading.Thread(target=watch, args=(subscriptions, since), daemon=True).start()
        elif method in ("send", "send.attachment"):
            threading.Thread(target=send, args=(req_id, method, params), daemon=True).start()
        elif method == "messages.history":
            history(req_id, params)
        elif method == "chats.list":
            ids = sorted({m["chat_id"] for m in lines("inbox.jsonl")})
            chats = [{"id": i, "identifier": f"+1555000{i}", "service": "iMessage"} for i in ids]
            emit({"id": req_id, "result": {"chats": chats[: int(params.get("limit", 20))]}})
        else:
            error(req_id, -32601, "Method not found", method)
    return 0


def status() -> int:
    bridge = (STATE / "bridge").exists() or (STATE / "stale-bridge").exists()
    live = (STATE / "bridge").exists()
    facts = {"basic_features": True, "advanced_features": bridge, "v2_ready": live}
    print(json.dumps({"version": "0.9.0", **facts, "bridge_version": 2 if live else 0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(rpc() if sys.argv[1:2] == ["rpc"] else status())
