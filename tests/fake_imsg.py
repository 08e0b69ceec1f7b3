"""A stand-in for `imsg rpc`: JSON-RPC 2.0, one object per line on stdin/stdout.

State lives in $FAKE_IMSG_DIR: the test appends incoming messages (imsg's Message objects) to
inbox.jsonl; `watch.subscribe {since_rowid}` streams those after the rowid as `message`
notifications (interleaved with responses, as the real one does) and keeps watching; `send`
params are appended to sent.jsonl. A file named `die` makes the next `send` kill the process
before answering (the file is removed first, so the restarted process works).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_IMSG_DIR"])
_write = threading.Lock()


def emit(message: dict) -> None:
    with _write:
        sys.stdout.write(json.dumps(message, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def watch(subscription: int, since: int) -> None:
    inbox = STATE / "inbox.jsonl"
    seen = since
    while True:
        lines = inbox.read_text(encoding="utf-8").splitlines() if inbox.exists() else []
        for line in lines:
            message = json.loads(line)
            if message["id"] > seen:
                seen = message["id"]
                emit(
                    {
                        "jsonrpc": "2.0",
                        "method": "message",
                        "params": {"subscription": subscription, "message": message},
                    }
                )
        time.sleep(0.05)


def main() -> int:
    with (STATE / "starts.log").open("a") as log:
        log.write(f"{os.getpid()}\n")
    subscriptions = 0
    for line in sys.stdin:
        request = json.loads(line)
        req_id, method, params = request.get("id"), request.get("method"), request.get("params", {})
        if method == "watch.subscribe":
            subscriptions += 1
            with (STATE / "subscribes.jsonl").open("a") as log:
                log.write(json.dumps(params) + "\n")
            emit({"jsonrpc": "2.0", "id": req_id, "result": {"subscription": subscriptions}})
            threading.Thread(
                target=watch, args=(subscriptions, params.get("since_rowid", 0)), daemon=True
            ).start()
        elif method == "send":
            if (STATE / "die").exists():
                (STATE / "die").unlink()
                os._exit(1)
            if "file" in params and not Path(params["file"]).is_file():
                emit(
                    {
                        "jsonrpc": "2.0",
                        "id": req_id,
                        "error": {"code": -32602, "message": "file not found"},
                    }
                )
                continue
            with (STATE / "sent.jsonl").open("a") as log:
                log.write(json.dumps(params, ensure_ascii=False) + "\n")
            emit({"jsonrpc": "2.0", "id": req_id, "result": {"ok": True}})
        else:
            emit(
                {
                    "jsonrpc": "2.0",
                    "id": req_id,
                    "error": {"code": -32601, "message": f"Method not found: {method}"},
                }
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
