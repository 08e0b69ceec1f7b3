"""Changing keys of the user's TOML config file the way a careful person edits it: comments,
order and the other keys stay (tomlkit), the result must load, and it replaces the old file in
one rename, so a reader never sees half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import tomlkit
from tomlkit.items import Table

from msgvoice.config import ALIASES, Config, ConfigError, load

Settings = Mapping[str, str | None]
"""Dotted key → new value, or None to take the key out of the file (its default again)."""


def edited(path: Path, settings: Settings) -> str:
    """The file's text with `settings` applied."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    doc = tomlkit.parse(text)
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        table = doc.get(section)
        if table is None:
            if value is None:
                continue
            table = doc[section] = tomlkit.table()
        assert isinstance(table, Table)
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return tomlkit.dumps(doc)


def changes(config: Config, settings: Settings) -> list[str]:
    """What `settings` change, against the values in force, one line each."""
    current = config.effective()
    lines = []
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        old = current[section][key]
        if value is None:
            lines.append(f"{dotted}: back to its default (was {old!r})")
        elif value != old:
            lines.append(f"{dotted} = {value!r} (was {old!r})")
    return lines


def overridden(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """The environment variables that would override keys of `settings`."""
    names = []
    for dotted in settings:
        section, key = dotted.split(".")
        names.append(f"MSGVOICE_{section}_{key}".upper())
        names += [alias for alias, target in ALIASES.items() if target == dotted]
    return [name for name in names if name in environ]


def without(environ: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """`environ` less the variables that would override `settings`."""
    gone = set(overridden(settings, environ))
    return {k: v for k, v in environ.items() if k not in gone}


def staged(path: Path, settings: Settings, environ: Mapping[str, str]) -> tuple[Path, Config]:
    """The edited file written beside `path` (not yet in its place) and the config it loads,
    with the environment's overrides of these keys left out; ConfigError if it does not load."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(edited(path, settings))
        if path.exists():
            os.chmod(name, path.stat().st_mode & 0o777)
        return Path(name), load(Path(name), without(environ, settings))
    except (ConfigError, OSError):  # a value that does not load, or a full disk: no leftover
        os.unlink(name)
        raise


def commit(staged_path: Path, path: Path) -> None:
    """The staged file takes the config's place."""
    os.replace(staged_path, path)
