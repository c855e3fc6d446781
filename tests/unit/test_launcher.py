"""The native launcher (devenv/launcher/launcher.c), built here with the host's C compiler.

Its peer in these tests is a recording control socket: a real unix socket
that takes the request and its three descriptors the way the host agent does,
answers what the test scripts, and keeps what it received. Where the launcher
must hand over to the Python CLI, a `devenv-py` stand-in beside it records its
arguments. The tests that fix what the caller sees of an exec (the request,
its fds, exit codes and messages) run against the Python CLI's fast path as
well, through the console script pip writes: both programs must answer alike.
tests/integration/test_hostagent.py runs the same launcher against the real
host agent; tests/e2e against a real guest.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devenv import paths
from devenv.cli.entry import AGENT_UNAVAILABLE_ENV, _quick_name
from devenv.launcher import build
from tests.launcher_build import built_launcher

# A failure in the recording agent's thread fails the test that caused it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

STAND_IN = """#!/bin/sh
for a in "$@"; do printf '%s\\0' "$a"; done > "$LAUNCHER_TEST_RECORD"
printf '%s' "${_DEVENV_AGENT_UNAVAILABLE-unset}" > "$LAUNCHER_TEST_RECORD.asked"
exit 3
"""


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = built_launcher(tmp_path_factory.mktemp("launcher"))
    (path.parent / build.PYTHON_CLI).write_text(STAND_IN)
    (path.parent / build.PYTHON_CLI).chmod(0o755)
    return path


@dataclass
class Run:
    code: int
    out: bytes
    err: bytes
    handed_over: list[str] | None  # the arguments devenv-py got, or None when the launcher served it


@dataclass
class Ctx:
    launcher: Path
    home: Path
    project: Path
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str | bytes, stdin: bytes | None = None, cwd: Path | None = None) -> Run:
        record = self.tmp / "handed-over"
        record.unlink(missing_ok=True)
        record.with_name("handed-over.asked").unlink(missing_ok=True)
        (self.tmp / "in").write_bytes(stdin or b"")
        with (
            open(self.tmp / "in", "rb") if stdin is not None else open(os.devnull, "rb") as i,
            open(self.tmp / "out", "wb") as o,
            open(self.tmp / "err", "wb") as e,
        ):
            code = subprocess.run(
                [self.launcher, *args],
                stdin=i,
                stdout=o,
                stderr=e,
                cwd=cwd or self.project,
                env={**self.env, "LAUNCHER_TEST_RECORD": str(record)},
                timeout=30,
                check=False,
            ).returncode
        handed = record.read_bytes().split(b"\0")[:-1] if record.exists() else None
        return Run(
            code,
            (self.tmp / "out").read_bytes(),
            (self.tmp / "err").read_bytes(),
            None if handed is None else [os.fsdecode(a) for a in handed],
        )

    def listen(self, name: str = "default", replies: list[bytes] | None = None, **kw: Any) -> Agent:
        return Agent(Path(self.home) / "instances" / name / "hostagent.sock", replies, **kw)


class Agent:
    """One connection's worth of the host agent's control socket: the request, its fds, scripted replies."""

    def __init__(
        self,
        path: Path,
        replies: list[bytes] | None,
        write: bytes = b"",
        wait_for: str | None = None,
        delay: float = 0.0,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.replies = [b'{"exit_code":0,"final":true}\n'] if replies is None else replies
        self.write = write
        self.wait_for = wait_for  # an op the launcher must send before the replies go out
        self.delay = delay  # seconds between accepting and reading: a long request waits in send()
        self.request: dict[str, Any] | None = None
        self.fd_ids: list[tuple[int, int]] = []
        self.later: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.sock.settimeout(0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
                break
            except TimeoutError:
                if self.stop.is_set():
                    return
            except OSError:
                return
        conn.settimeout(20)
        with conn:
            time.sleep(self.delay)
            data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
            while b"\n" not in data:
                more = conn.recv(1 << 20)
                if not more:
                    return  # the launcher left mid-request: nothing to run
                data += more
            line, _, data = data.partition(b"\n")
            self.request = json.loads(line)
            self.fd_ids = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in fds]
            if self.write and len(fds) == 3:
                os.write(fds[1], self.write)
            for fd in fds:
                os.close(fd)
            if self.wait_for:
                while b"\n" not in data:
                    more = conn.recv(4096)
                    if not more:
                        return
                    data += more
                self.later.append(json.loads(data.partition(b"\n")[0]))
            for line in self.replies:
                conn.sendall(line)

    def close(self) -> None:
        """After the launcher exited: nobody connects any more."""
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        self.path.unlink(missing_ok=True)


def _ctx(program: Path, tmp_path: Path) -> Iterator[Ctx]:
    home = Path(tempfile.mkdtemp(prefix="dl-", dir="/tmp"))  # short: the socket path must fit sun_path
    project = tmp_path / "work"
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DEVENV_INSTANCE", "XDG_DATA_HOME")}
    env["DEVENV_HOME"] = str(home)
    yield Ctx(program, home, project, tmp_path, env)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def ctx(launcher: Path, tmp_path: Path) -> Iterator[Ctx]:
    yield from _ctx(launcher, tmp_path)


# What pip writes as the `devenv-py` (or `devenv`) console script for entry point devenv.cli.entry:main.
CONSOLE_SCRIPT = f"""#!{sys.executable}
import sys
from devenv.cli.entry import main
if __name__ == "__main__":
    sys.argv[0] = sys.argv[0].removesuffix(".exe")
    sys.exit(main())
"""


@pytest.fixture(params=["launcher", "python-cli"])
def either(request: pytest.FixtureRequest, launcher: Path, tmp_path: Path) -> Iterator[Ctx]:
    """The native launcher, then the Python CLI's console script: the same exec contract."""
    program = launcher
    if request.param == "python-cli":
        program = tmp_path / "bin" / "devenv"
        program.parent.mkdir()
        program.write_text(CONSOLE_SCRIPT)
        program.chmod(0o755)
    yield from _ctx(program, tmp_path)


def test_request_carries_argv_cwd_and_the_callers_fds(either: Ctx) -> None:
    agent = either.listen(replies=[b'{"exit_code":7,"final":true}\n'], write=b"from the agent\n")
    r = either.run("exec", "--", "sh", "-c", "exit 7")
    agent.close()
    assert (r.code, r.out, r.err, r.handed_over) == (7, b"from the agent\n", b"", None)
    assert agent.request == {
        "op": "exec",
        "argv": ["sh", "-c", "exit 7"],
        "env": {},
        "cwd": os.path.realpath(either.project),  # getcwd() resolves links (macOS: /var -> /private/var)
        "stdin": False,
    }
    out, err = os.stat(either.tmp / "out"), os.stat(either.tmp / "err")
    assert agent.fd_ids[1:] == [(out.st_dev, out.st_ino), (err.st_dev, err.st_ino)]


def test_argv_bytes_arrive_as_python_would_read_them(either: Ctx) -> None:
    """Not UTF-8 -> \\udcXX (surrogateescape), quotes, controls and non-ASCII text as they are."""
    raw = [
        b"caf\xc3\xa9",
        b'q"b\\s',
        b"tab\tnl\n\x01",
        b"bad\xff\xfe",
        b"\xe2\x82",
        b"\xf0\x9f\x90\x8d",
        b"\xed\xa0\x80",
    ]
    agent = either.listen()
    r = either.run("exec", "--", *raw)
    agent.close()
    assert r.code == 0 and agent.request is not None
    assert agent.request["argv"] == [os.fsdecode(a) for a in raw]


@pytest.mark.parametrize(
    ("flags", "workdir"),
    [
        (["-w", "/srv/x"], "/srv/x"),
        (["--workdir", "/srv/y"], "/srv/y"),
        (["--workdir=/srv/z"], "/srv/z"),
        (["--workdir="], None),  # `workdir or None`: where the caller is
    ],
)
def test_workdir_flags(either: Ctx, flags: list[str], workdir: str | None) -> None:
    """-w names a guest directory, sent beside the caller's cwd (which the agent maps only without -w)."""
    agent = either.listen()
    assert either.run("exec", *flags, "--", "pwd").code == 0
    agent.close()
    assert agent.request is not None and agent.request["cwd"] == os.path.realpath(either.project)
    assert agent.request.get("workdir") == workdir


@pytest.mark.parametrize("flag", ["src", "./src", "~/src"])
def test_a_relative_workdir_is_a_usage_error_and_nothing_runs(either: Ctx, flag: str) -> None:
    agent = either.listen()
    r = either.run("exec", "-w", flag, "--", "pwd")
    agent.close()
    assert agent.request is None
    if either.launcher.read_bytes().startswith(b"#!"):  # the Python CLI's console script
        assert r.code == 64 and b"must be an absolute path in the instance" in r.err, r.err
    else:
        assert (r.code, r.handed_over) == (3, ["exec", "-w", flag, "--", "pwd"])


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["-e", "A=1"], {"A": "1"}),
        (["--env", "B=two words"], {"B": "two words"}),
        (["--env=C=3"], {"C": "3"}),
        (["-e", "URL=a=b&c"], {"URL": "a=b&c"}),  # the first `=` ends the name
        (["-e", "EMPTY="], {"EMPTY": ""}),
        (["-e", "FROM_HOST"], {"FROM_HOST": "host value"}),  # NAME alone: the host's value
        (["-e", "NOT_ON_HOST"], {}),  # ...and nothing when the host has none, as `docker run -e`
        (["-e", "A=1", "-e", "A=2"], {"A": "2"}),  # the last one wins
        (["-e", '_x9=\u00e9\t"q"\n'], {"_x9": '\u00e9\t"q"\n'}),
        (["-e", "A=1", "-w", "/srv", "-e", "B=2"], {"A": "1", "B": "2"}),
    ],
    ids=["short", "long", "long=", "eq-in-value", "empty", "host", "host-unset", "last-wins", "escapes", "mixed"],
)
def test_env_flags(either: Ctx, flags: list[str], env: dict[str, str]) -> None:
    either.env["FROM_HOST"] = "host value"
    either.env.pop("NOT_ON_HOST", None)
    agent = either.listen()
    r = either.run("exec", *flags, "--", "env")
    agent.close()
    assert (r.code, r.handed_over) == (0, None)
    assert agent.request is not None and agent.request["env"] == env


def test_env_value_bytes_arrive_as_python_would_read_them(either: Ctx) -> None:
    """The host's own value, not UTF-8, comes through as os.environ holds it (surrogateescape)."""
    raw = b"caf\xc3\xa9 \xff"
    either.env["RAW"] = os.fsdecode(raw)
    agent = either.listen()
    assert either.run("exec", "-e", "RAW", "-e", b"SET=" + raw, "--", "env").code == 0
    agent.close()
    assert agent.request is not None and agent.request["env"] == {"RAW": os.fsdecode(raw), "SET": os.fsdecode(raw)}


@pytest.mark.parametrize("flag", ["1X=1", "=v", "", "A-B=1", "caf\u00e9=1", "A B"])
def test_a_bad_env_name_is_a_usage_error_and_nothing_runs(either: Ctx, flag: str) -> None:
    """The launcher leaves it to the Python CLI, which says what is wrong (exit 64) without asking the agent."""
    agent = either.listen()
    r = either.run("exec", "-e", "OK=1", "-e", flag, "--", "true")
    agent.close()
    assert agent.request is None
    if either.launcher.read_bytes().startswith(b"#!"):  # the Python CLI's console script
        assert r.code == 64
        assert r.err.decode().startswith(f"devenv: error: -e {flag}: `{flag.partition('=')[0]}` is not an environment")
        assert b"-e NAME=VALUE" in r.err and b"Traceback" not in r.err
    else:
        assert (r.code, r.handed_over) == (3, ["exec", "-e", "OK=1", "-e", flag, "--", "true"])


def test_stdin_is_offered_only_when_it_has_data(either: Ctx) -> None:
    for stdin, expected in ((None, False), (b"data", True)):
        agent = either.listen()
        assert either.run("exec", "--", "cat", stdin=stdin).code == 0
        agent.close()
        assert agent.request is not None and agent.request["stdin"] is expected


@pytest.mark.parametrize(
    ("replies", "code", "err"),
    [
        ([b'{"error":"exec needs a command","code":2,"final":true}\n'], 2, b"devenv: exec needs a command\n"),
        ([b'{"final":true}\n'], 255, b"devenv: the host agent failed to run the command\n"),
        ([b'{"started":true}\n', b'{"stdin_ack":1}\n', b'{"exit_code":3,"final":true}\n'], 3, b""),
        ([b'{"exit_code":300,"final":true}\n'], 300 & 0xFF, b""),
        ([b'{"error":"caf\\u00e9 \\ud83d\\udc0d","final":true}\n'], 255, "devenv: café 🐍\n".encode()),
        ([], 255, b"devenv: lost the connection to the host agent while the command ran\n"),
        ([b"not json\n"], 255, b"devenv: lost the connection to the host agent while the command ran\n"),
        ([b'{"exit_code":1}\n'], 255, b"devenv: lost the connection to the host agent while the command ran\n"),
    ],
    ids=["error", "bare-final", "skips-non-final", "wraps", "unicode-error", "closed", "bad-json", "no-final"],
)
def test_answers_become_exit_codes_and_messages(either: Ctx, replies: list[bytes], code: int, err: bytes) -> None:
    agent = either.listen(replies=replies)
    r = either.run("exec", "--", "true")
    agent.close()
    assert (r.code, r.err, r.handed_over) == (code, err, None)


def test_unavailable_hands_over_to_the_python_cli(ctx: Ctx) -> None:
    agent = ctx.listen(replies=[b'{"unavailable":true,"error":"not connected","final":true}\n'])
    r = ctx.run("exec", "-n", "default", "--", "true")
    agent.close()
    assert agent.request is not None  # asked first, and nothing was started
    assert (r.code, r.handed_over) == (3, ["exec", "-n", "default", "--", "true"])
    assert (ctx.tmp / "handed-over.asked").read_text() == "1"  # Python does not ask (and wait) again


def test_only_the_launcher_sets_the_asked_flag(ctx: Ctx) -> None:
    ctx.env[AGENT_UNAVAILABLE_ENV] = "1"  # left over in the caller's environment: dropped
    assert ctx.run("status").handed_over == ["status"]
    assert (ctx.tmp / "handed-over.asked").read_text() == "unset"


def test_sigint_goes_to_the_remote_command(ctx: Ctx) -> None:
    agent = ctx.listen(replies=[b'{"exit_code":130,"final":true}\n'], write=b"ready\n", wait_for="signal")
    proc = subprocess.Popen(
        [ctx.launcher, "exec", "--", "sleep", "60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=ctx.project,
        env=ctx.env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"  # the request (and our stdout) reached the agent
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 130
    agent.close()
    assert agent.later == [{"op": "signal", "signal": "INT"}]


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["list"],
        ["exec"],
        ["exec", "--"],
        ["exec", "--help", "--", "true"],
        ["exec", "true"],  # no `--`: typer explains
        ["exec", "-n"],
        ["exec", "-n", "a/b", "--", "true"],
        ["exec", "-n", "", "--", "true"],
        ["exec", "--name=.hidden", "--", "true"],
        ["status", "--json"],
    ],
)
def test_everything_else_goes_to_the_python_cli_unchanged(ctx: Ctx, args: list[str]) -> None:
    agent = ctx.listen()
    r = ctx.run(*args)
    agent.close()
    assert (r.code, r.handed_over) == (3, args)
    assert agent.request is None


def test_no_agent_listening_hands_over(ctx: Ctx) -> None:
    r = ctx.run("exec", "--", "true")
    assert (r.code, r.handed_over) == (3, ["exec", "--", "true"])
    (ctx.home / "instances" / "default").mkdir(parents=True)
    (ctx.home / "instances" / "default" / "hostagent.sock").write_text("")  # a stale file, not a socket
    assert ctx.run("exec", "--", "true").handed_over == ["exec", "--", "true"]


def test_shell_completion_is_the_python_clis(ctx: Ctx) -> None:
    agent = ctx.listen()
    ctx.env["_DEVENV_COMPLETE"] = "bash_complete"
    r = ctx.run("exec", "--", "true")
    agent.close()
    assert r.handed_over == ["exec", "--", "true"] and agent.request is None


@pytest.mark.parametrize("length", [103, 104, 107])
def test_a_socket_path_too_long_for_sun_path_is_left_to_python(ctx: Ctx, length: int) -> None:
    """paths.SUN_PATH_MAX (104, macOS's limit): from there on Python keeps the socket in a short dir."""
    tail = "/instances/default/hostagent.sock"
    home = ctx.home / ("d" * (length - len(str(ctx.home)) - 1 - len(tail)))
    assert len(str(home) + tail) == length
    ctx.env["DEVENV_HOME"] = str(home)
    try:
        agent: Agent | None = Agent(Path(str(home) + tail), None)  # Linux binds up to 107 bytes, macOS 103
    except OSError:
        agent = None
    r = ctx.run("exec", "--", "true")
    if agent is not None:
        agent.close()
    if length < 104:
        assert agent is not None and (r.code, r.handed_over) == (0, None) and agent.request is not None
    else:
        assert r.handed_over == ["exec", "--", "true"] and (agent is None or agent.request is None)


def test_a_request_longer_than_the_agents_line_limit_is_left_to_python(ctx: Ctx) -> None:
    """The agent drops lines over wire.MAX_LINE with the connection; Python then runs the command over SSH."""
    agent = ctx.listen()
    big = ["x" * 110_000] * 10  # one argument may hold 128 KiB on Linux
    r = ctx.run("exec", "--", "echo", *big)
    agent.close()
    assert agent.request is None and r.handed_over == ["exec", "--", "echo", *big]


def test_sigint_while_a_long_request_is_sent_arrives_after_it(ctx: Ctx) -> None:
    """^C held back until the whole request is out: the agent reads it intact, then the signal line."""
    agent = ctx.listen(replies=[b'{"exit_code":130,"final":true}\n'], wait_for="signal", delay=1.0)
    long = ["y" * 100_000] * 9  # more than the socket buffers hold: the launcher waits in send()
    proc = subprocess.Popen(
        [ctx.launcher, "exec", "--", "echo", *long], stdin=subprocess.DEVNULL, cwd=ctx.project, env=ctx.env
    )
    time.sleep(0.4)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 130
    agent.close()
    assert agent.request is not None and agent.request["argv"] == ["echo", *long]
    assert agent.later == [{"op": "signal", "signal": "INT"}]


def test_a_closed_stderr_does_not_kill_the_launcher(ctx: Ctx) -> None:
    """The agent's error goes to a stderr nobody reads any more: the exit code still comes through."""
    agent = ctx.listen(replies=[b'{"error":"boom","code":5,"final":true}\n'])
    r_fd, w_fd = os.pipe()
    os.close(r_fd)
    try:
        code = subprocess.run(
            [ctx.launcher, "exec", "--", "true"], stdin=subprocess.DEVNULL, stderr=w_fd, cwd=ctx.project, env=ctx.env
        ).returncode
    finally:
        os.close(w_fd)
    agent.close()
    assert code == 5


def test_missing_python_cli_is_a_clear_error(ctx: Ctx, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ctx.launcher, alone / "devenv")
    ctx.launcher = alone / "devenv"
    r = ctx.run("status")
    assert r.code == 70
    assert r.err.startswith(f"devenv: error: cannot run {alone}/devenv-py: No such file".encode())
    assert b"\n  hint: reinstall devenv" in r.err


def test_found_through_a_symlink(ctx: Ctx, tmp_path: Path) -> None:
    """pipx links ~/.local/bin/devenv to the venv's: devenv-py is found beside the real file."""
    link = tmp_path / "elsewhere" / "devenv"
    link.parent.mkdir()
    link.symlink_to(ctx.launcher)
    ctx.launcher = link
    assert ctx.run("status").handed_over == ["status"]


# The instance the launcher asks for must be the one the Python CLI would: same table as test_fast_name.
TOML_CASES = [
    'name = "web"\n',
    'name="web" # the project\ncpus = 2\n',
    'cpus = 2\nname = "a.b_c-1"\n',
    'cpus = 2\r\nname = "crlf"\r\n',
    "cpus = 2\n",
    '[[mounts]]\nname = "not-top-level"\n',
    "",
    "name = 'single'\n",
    'name = "a/b"\n',
    'namespace = "x"\n',
    'name = "x" y\n',
    'name = "caf\xe9"\n',
    'name\v= "vt"\n',
]


@pytest.mark.parametrize("text", TOML_CASES)
@pytest.mark.parametrize("env_instance", [None, "fromenv"])
def test_instance_name_agrees_with_the_python_cli(
    ctx: Ctx, text: str, env_instance: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = ctx.project / "sub"
    sub.mkdir()
    (ctx.project / "devenv.toml").write_text(text, encoding="utf-8")
    if env_instance:
        ctx.env["DEVENV_INSTANCE"] = env_instance
        monkeypatch.setenv("DEVENV_INSTANCE", env_instance)
    monkeypatch.chdir(sub)  # found in a parent folder, as config.find_project_config does
    expected = _quick_name(None)
    agents = {n: ctx.listen(n) for n in {"web", "a.b_c-1", "crlf", "fromenv", "default"}}
    r = ctx.run("exec", "--", "true", cwd=sub)
    for agent in agents.values():
        agent.close()
    asked = [n for n, a in agents.items() if a.request is not None]
    if expected is None:
        assert (asked, r.handed_over) == ([], ["exec", "--", "true"])
    else:
        assert (asked, r.code) == ([expected], 0)


@pytest.mark.parametrize(("flag", "name"), [(["-n", "x1"], "x1"), (["--name", "x2"], "x2"), (["--name=x3"], "x3")])
def test_explicit_name_flags(ctx: Ctx, flag: list[str], name: str) -> None:
    (ctx.project / "devenv.toml").write_text('name = "other"\n')
    agent = ctx.listen(name)
    assert ctx.run("exec", *flag, "--", "true").code == 0
    agent.close()
    assert agent.request is not None


@pytest.mark.parametrize("form", ["relative", "tilde", "dots"])
def test_devenv_home_forms_agree_with_paths(ctx: Ctx, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = ctx.home.parent
    value = {
        "relative": os.path.relpath(os.path.realpath(ctx.home), os.path.realpath(ctx.project)),
        "tilde": "~/" + ctx.home.name,
        "dots": f"{parent}/./x/../{ctx.home.name}/",
    }[form]
    ctx.env["DEVENV_HOME"] = value
    if form == "tilde":
        ctx.env["HOME"] = str(parent)
        monkeypatch.setenv("HOME", str(parent))
    monkeypatch.setenv("DEVENV_HOME", value)
    monkeypatch.chdir(ctx.project)
    agent = ctx.listen()
    assert os.path.samefile(paths.instance_dir_str("default"), ctx.home / "instances" / "default")
    assert ctx.run("exec", "--", "true").code == 0
    agent.close()
    assert agent.request is not None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the XDG data dir is the Linux default")
@pytest.mark.parametrize("xdg", [None, "data", "  spaced  "])
def test_default_home_is_the_xdg_data_dir(ctx: Ctx, xdg: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx.env.pop("DEVENV_HOME")
    monkeypatch.delenv("DEVENV_HOME", raising=False)
    ctx.env["HOME"] = str(ctx.home)
    monkeypatch.setenv("HOME", str(ctx.home))
    if xdg is not None:
        value = str(ctx.home / xdg.strip()) if xdg.strip() == xdg else f"  {ctx.home}/d  "
        ctx.env["XDG_DATA_HOME"] = value
        monkeypatch.setenv("XDG_DATA_HOME", value)
    else:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    inst = Path(paths.instance_dir_str("default"))
    agent = Agent(inst / "hostagent.sock", None)
    assert ctx.run("exec", "--", "true").code == 0
    agent.close()
    assert agent.request is not None


def test_installed_tells_the_native_launcher_from_the_python_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devenv import launcher as launcher_info

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "devenv-py").write_text("#!/usr/bin/python3\n")
    monkeypatch.setattr(sys, "argv", [str(bindir / "devenv-py"), "doctor"])
    (bindir / "devenv").write_bytes(b"\x7fELF\x02\x01\x01")
    assert launcher_info.installed() == {"kind": "native", "path": str(bindir / "devenv"), "fix": None}
    (bindir / "devenv").write_text("#!/usr/bin/python3\nimport sys\n")
    info = launcher_info.installed()
    assert (info["kind"], info["path"]) == ("python", str(bindir / "devenv"))
    assert info["fix"] is not None and "C compiler" in info["fix"]


def test_opting_out_at_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(build.OPT_OUT_ENV, "0")
    assert build.wanted() == f"{build.OPT_OUT_ENV}=0"
    assert build.build(Path("/nonexistent")) == (None, f"{build.OPT_OUT_ENV}=0")
    monkeypatch.setenv(build.OPT_OUT_ENV, "1")
    assert (build.wanted() is None) == build.native_platform()  # anything but "0" builds, where it can
