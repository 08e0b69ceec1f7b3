"""Append one JSON line per call to $FAKE_INDEXTTS_LOG."""

from __future__ import annotations

import json
import os
from typing import Any


def record(event: str, **data: Any) -> None:
    path = os.environ.get("FAKE_INDEXTTS_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"event": event, **data}, default=str) + "\n")
