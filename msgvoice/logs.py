"""Logging for the commands, set up once: text or JSON lines, to stderr or a rotated file."""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import sys

from msgvoice.config import Config


class JsonLines(logging.Formatter):
    """One JSON object per log line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup(args: argparse.Namespace, fmt: str = "text", config: Config | None = None) -> None:
    """Log to stderr (or, for the daemon with --log-file, a size-rotated file), text or JSON
    lines: INFO for the daemon, WARNING otherwise; -v lowers it."""
    base = logging.INFO if args.command == "run" else logging.WARNING
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    log_file = getattr(args, "log_file", None)
    if log_file is not None and config is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_file,
            maxBytes=int(config.retention.log_max_mb * 2**20),
            backupCount=config.retention.log_files,
            encoding="utf-8",
        )
    if fmt == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=base - 10 * args.verbose, handlers=[handler], force=True)
