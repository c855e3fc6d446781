"""Generated bad input (hypothesis): devenv.toml files, CLI argument lists, instance names, mount points.

Whatever comes in, the answer is a devenv error with its exit code (and the
file:line where there is one), never a traceback, and nothing accepted can
leave its place: a name stays one folder under instances/, a mount point is
an absolute guest path clear of the guest's system folders.

The CLI runs in this process on a private DEVENV_HOME, every backend replaced
by the fake one (orchestration only): no generated argument list can boot a VM
or run a command on this host.
"""

from __future__ import annotations

import json
import posixpath
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devenv import config
from devenv.errors import ConfigError, ExitCode, UsageError
from devenv.testing import use_fake_backend

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

KEYS = [*sorted(config.FIELDS), "nmae", "cpu", "Memory", "mounts.x", "ports"]
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    TEXT,
    st.sampled_from(["2GiB", "0", "-1MiB", "1e99GiB", "auto", "qemu", "fake", "docker", "~", "/", "..", "suspend"]),
)


def toml_value(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.integers(0, 3 if depth < 2 else 1))
    if kind <= 1:
        v = draw(SCALARS)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(v), repr(v))
        if isinstance(v, int):
            return str(v)
        return json.dumps(v)  # a TOML basic string (JSON's escapes are TOML's)
    if kind == 2:
        return "[" + ", ".join(toml_value(draw, depth + 1) for _ in range(draw(st.integers(0, 3)))) + "]"
    pairs = draw(st.lists(st.sampled_from(["location", "mount_point", "writable", "guest", "host", "script", "x"]),
                          max_size=3, unique=True))  # fmt: skip
    return "{ " + ", ".join(f"{k} = {toml_value(draw, depth + 1)}" for k in pairs) + " }"


@st.composite
def toml_files(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            lines.append(draw(TEXT))  # garbage: not TOML at all, mostly
        elif choice == 1:
            section = draw(st.sampled_from(["mounts", "ports", "provision", "env", "name"]))
            lines.append(f"[[{section}]]" if section != "env" else "[env]")
        else:
            lines.append(f"{draw(st.sampled_from(KEYS))} = {toml_value(draw)}")
    return "\n".join(lines) + "\n"


@given(text=toml_files())
@SETTINGS
def test_a_generated_devenv_toml_loads_or_says_where_it_is_wrong(text: str, tmp_path: Path) -> None:
    f = tmp_path / "devenv.toml"
    f.write_text(text, encoding="utf-8")
    try:
        cfg = config.load_file(f)
    except ConfigError as e:
        assert e.problems, text
        for problem in e.problems:
            assert problem.startswith(f"{f}:") or problem.startswith(f"{f} "), problem
        return
    # accepted: every value is what the rest of devenv relies on
    config.validate_name(cfg.name)
    assert 1 <= cfg.cpus <= 256 and cfg.memory >= 256 * 1024**2 and cfg.disk >= 1024**3
    for m in cfg.mounts:
        assert m.location and (m.mount_point == "" or config.mount_point_problem(m.mount_point) is None)
    assert config.load_file(f) == cfg  # the same file, the same answer


@given(name=st.one_of(TEXT, st.sampled_from(["..", ".", "a/../../etc", "a/b", "-rf", "x" * 80, "a\x00b", "ok.1"])))
@SETTINGS
def test_an_accepted_instance_name_is_one_folder_under_instances(name: str) -> None:
    try:
        config.validate_name(name)
    except UsageError as e:
        assert e.message and e.exit_code == ExitCode.USAGE
        return
    root = Path("/h/instances")
    assert posixpath.normpath(str(root / name)) == str(root / name)  # no . or .. or / in it
    assert (root / name).parent == root and name[0] in string.ascii_letters + string.digits


@given(
    point=st.one_of(
        TEXT.map(lambda s: "/" + s),
        TEXT,
        st.sampled_from(
            [
                "/",
                "/etc",
                "/etc/x",
                "/usr",
                "/proc/1",
                "/sys",
                "/dev/shm",
                "/boot",
                "/src/../etc",
                "//etc",
                "/home/u/src",
            ]
        ),
    )
)
@SETTINGS
def test_an_accepted_mount_point_is_a_clean_guest_path_clear_of_system_folders(point: str) -> None:
    problem = config.mount_point_problem(point)
    if problem is not None:
        return
    assert point.startswith("/") and posixpath.normpath(point) == point and "//" not in point and "\x00" not in point
    top = "/" + point.split("/")[1]
    assert point not in config.GUEST_SYSTEM_EXACT and top not in config.GUEST_SYSTEM_DIRS, point


# -- the CLI


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from devenv import backends
    from devenv.testing.fake import FakeBackend

    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEVENV_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEVENV_INSTANCE", raising=False)
    monkeypatch.delenv("DEVENV_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(backends, "load", lambda name: FakeBackend())  # never a real VM or engine
    with use_fake_backend():
        yield


COMMANDS = ["create", "start", "stop", "restart", "delete", "list", "status", "exec", "cp", "ssh-config", "logs",
            "docker-env", "image list", "image rm", "bogus"]  # fmt: skip
FLAGS = ["-n", "--name", "--json", "--backend", "--cpus", "--memory", "--disk", "--image", "--force", "--shutdown",
         "--suspend", "-e", "-w", "-t", "--", "-", "--tail", "--runtime", "--arch"]  # fmt: skip
ARG = st.one_of(st.sampled_from(FLAGS), TEXT, st.sampled_from(["fake", "web", "x:/tmp", "2GiB", "-1", "0", "99999"]))


@given(command=st.sampled_from(COMMANDS), args=st.lists(ARG, max_size=6))
@SETTINGS
def test_generated_arguments_get_an_answer_never_a_traceback(
    command: str, args: list[str], sandbox: None, capfd: pytest.CaptureFixture[str]
) -> None:
    from devenv.cli.entry import main

    argv = [*command.split(), *args]
    capfd.readouterr()
    code = main(argv)
    err = capfd.readouterr().err
    assert isinstance(code, int), argv
    assert "Traceback" not in err, (argv, err)
    assert code != ExitCode.INTERNAL, (argv, err)
    if code != 0:  # a devenv error with its hint, or the parser's usage message: each with its own exit code
        parser_said = code == ExitCode.USAGE and ("Usage:" in err or "Error" in err)  # typer's own boxed message
        assert "devenv: error:" in err or parser_said, (argv, code, err)


def _cfg_problems(text: str, tmp: Path) -> list[str]:
    f = tmp / "devenv.toml"
    f.write_text(text)
    try:
        config.load_file(f)
    except ConfigError as e:
        return e.problems
    return []


def test_a_mount_point_over_a_system_folder_is_refused_with_its_line(tmp_path: Path) -> None:
    text = 'name = "x"\n\n[[mounts]]\nlocation = "~/src"\nmount_point = "/etc"\n'
    (problem,) = _cfg_problems(text, tmp_path)
    assert problem.startswith(f"{tmp_path / 'devenv.toml'}:5: field `mounts[0].mount_point` must not"), problem
    for ok in ("/src", "/home/devenv/src", "/srv/app", "/tmp/x", "/opt/x"):
        assert config.mount_point_problem(ok) is None, ok
    # under /usr or /var too, as the same-path project mount always refused: one rule for both
    for bad in ("/", "/etc", "/etc/x", "/proc", "/sys/fs", "/dev", "/boot", "/usr", "/var", "/run/x", "/a/../etc",
                "//src", "/src/", "relative", "/a\x00b", "/usr/local/src", "/root", "/home"):  # fmt: skip
        assert config.mount_point_problem(bad) is not None, bad


CP_SIDE = st.one_of(
    TEXT,
    st.builds(lambda n, p: f"{n}:{p}", st.one_of(TEXT, st.sampled_from(["vm", "..", ".", "a/b", "C", "-x"])), TEXT),
    st.sampled_from(["vm:/etc/shadow", "vm:../../x", "vm:$(reboot)", "vm:`id`", "../vm:x", "C:\\x", "vm:", ".."]),
)


@given(src=CP_SIDE, dst=CP_SIDE)
@SETTINGS
def test_a_cp_spec_is_refused_or_names_one_instance_folder_and_keeps_both_paths_as_given(src: str, dst: str) -> None:
    """`devenv cp` never turns a spec into anything but an instance name that is one folder under
    instances/ and two paths passed on untouched (the guest side goes to SFTP, never to a shell)."""
    from devenv.transport.cpspec import parse_copy_args

    try:
        plan = parse_copy_args(src, dst)
    except UsageError as e:
        assert e.message and e.hint
        return
    assert config.NAME_RE.match(plan.instance), plan
    assert posixpath.normpath(f"instances/{plan.instance}") == f"instances/{plan.instance}", plan
    guest, host = (src, dst) if plan.direction == "from_guest" else (dst, src)
    assert host == plan.host_path
    assert guest in (f"{plan.instance}:{plan.guest_path}", f"{plan.instance}:"), plan
