"""A stand-in for macOS's `launchctl`, for the verbs msgvoice uses, after launchctl(1)
(`bootstrap DOMAIN PATH`, `bootout SERVICE`, `enable SERVICE`, `print DOMAIN|SERVICE`) and what
it does on a real Mac:
- `bootout` returns before launchd has let go of the label. Until it has (the daemon is still
  draining), `print` still finds the service and `bootstrap` fails with "Bootstrap failed: 5:
  Input/output error" (exit 5); it lets go of the label a little before bootstrap works again.
  On a Mac that takes a while; here it is counted in calls, not seconds, so the order of
  states is the same on a loaded machine: after a bootout, `print` still finds the service
  the next HELD_PRINTS times, then bootstrap fails with 5 the next BUSY_BOOTSTRAPS times.
- `print SERVICE` shows `pid = N` while the job runs and exits 113 "Could not find service" when
  launchd does not have it; `print gui/UID` fails when there is no GUI session, and `bootstrap`
  there fails with 125 "Domain does not support specified action".
State lives in $FAKE_LAUNCHCTL_DIR (`loaded`, and the counts left: `held`, `busy`); every
call is appended to calls.jsonl with its exit code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_LAUNCHCTL_DIR"])
NO_GUI = bool(os.environ.get("FAKE_LAUNCHCTL_NO_GUI"))
HELD_PRINTS, BUSY_BOOTSTRAPS = 2, 2


def left(name: str) -> int:
    path = STATE / name
    return int(path.read_text()) if path.exists() else 0


def take(name: str) -> bool:
    """Whether count `name` had any left (and, if so, one fewer now)."""
    n = left(name)
    if n > 0:
        (STATE / name).write_text(str(n - 1))
    return n > 0


def main(args: list[str]) -> int:  # noqa: PLR0911 (one answer per verb and state)
    verb, target = args[0], args[1]
    loaded = (STATE / "loaded").exists()
    if verb == "print" and target.count("/") == 1:
        return 1 if NO_GUI else 0
    if verb == "print":
        if loaded or take("held"):
            print(f"{target} = {{\n\tstate = running\n\tpid = 4242\n}}")
            return 0
        print(f'Bad request.\nCould not find service "{target}" in domain', file=sys.stderr)
        return 113
    if verb == "bootout":
        if not loaded:
            print("Boot-out failed: 3: No such process", file=sys.stderr)
            return 3
        (STATE / "loaded").unlink()
        (STATE / "held").write_text(str(HELD_PRINTS))
        (STATE / "busy").write_text(str(BUSY_BOOTSTRAPS))
        return 0
    if verb == "enable":
        return 0
    if verb == "bootstrap":
        if NO_GUI:
            print(
                "Bootstrap failed: 125: Domain does not support specified action", file=sys.stderr
            )
            return 125
        if loaded or left("held") or take("busy"):
            print("Bootstrap failed: 5: Input/output error", file=sys.stderr)
            return 5
        (STATE / "loaded").touch()
        return 0
    print(f"Unrecognized subcommand: {verb}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    code = main(sys.argv[1:])
    with (STATE / "calls.jsonl").open("a") as calls:
        calls.write(json.dumps({"args": sys.argv[1:], "code": code}) + "\n")
    raise SystemExit(code)
