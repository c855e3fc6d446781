"""A real OpenSSH server for integration tests: `sshd` fixture and `SSHDServer`.

Why a real sshd and not a paramiko test server: the guest runs OpenSSH, and the
details that break transports (setsid per session, exit-signal, SFTP server
quirks, direct-streamlocal, host-key negotiation) only show up against it.

The server runs in the foreground (-D) as a child of the test process with
every file (config, host key, authorized_keys, log, pid) in a tmp dir, listens
on a free 127.0.0.1 port, allows only public-key auth, and is killed after.

Works as root and as a normal user:
- as root sshd insists on its privilege-separation directory (/run/sshd on
  Debian); it is created if missing (mode 0755, root), the one change outside
  the tmp dir. Root logs in with its key (PermitRootLogin prohibit-password).
- as a normal user sshd cannot switch users, so the test user is the current
  user; privilege separation is skipped by sshd itself and PAM is off.
- StrictModes is off because pytest's tmp dirs live under world-writable /tmp,
  which StrictModes rejects for authorized_keys.

Use it from a test module with `from tests.integration.sshd_fixture import sshd, sshd_server`
(both names: `sshd` depends on the module-scoped `sshd_server`)
or directly with `with SSHDServer(tmp_path) as server: ...`.

Needs: /usr/sbin/sshd (openssh-server) and ssh-keygen (openssh-client).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = os.environ.get("DEVENV_TEST_SSHD", "/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class SSHDInfo:
    """What a client needs to reach the server; paths are inside the tmp dir."""

    host: str
    port: int
    user: str
    client_key: Path  # private ed25519 key whose .pub is authorized
    host_key: Path  # the server's private host key
    host_pubkey: Path  # its public half: the key a client pins
    host_pubkey_line: str  # "ssh-ed25519 AAAA... comment"
    log: Path
    workdir: Path


def ssh_tools_available() -> str | None:
    """None when sshd and ssh-keygen exist, else why the tests must be skipped."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (apt-get install openssh-client)"
    return None


def keygen(path: Path, comment: str = "devenv-test") -> Path:
    """Make an unencrypted ed25519 key pair at `path` and `path`.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    children = [int(p) for p in out.split()]
    return [d for c in children for d in (c, *_descendants(c))]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SSHDServer:
    """Start/stop one sshd; a context manager. Restartable on the same port and keys."""

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        self.workdir = workdir
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.user = pwd.getpwuid(os.getuid()).pw_name
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o700)
        self.host_key = keygen(workdir / "ssh_host_ed25519_key", "devenv-test-host")
        self.client_key = keygen(workdir / "id_ed25519", "devenv-test-client")
        self.authorized_keys = workdir / "authorized_keys"
        self.authorized_keys.write_text((workdir / "id_ed25519.pub").read_text())
        os.chmod(self.authorized_keys, 0o600)
        self.log = workdir / "sshd.log"
        self.config = workdir / "sshd_config"
        self.port = free_port()

    @property
    def info(self) -> SSHDInfo:
        pub = Path(f"{self.host_key}.pub")
        return SSHDInfo(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            client_key=self.client_key,
            host_key=self.host_key,
            host_pubkey=pub,
            host_pubkey_line=pub.read_text().strip(),
            log=self.log,
            workdir=self.workdir,
        )

    def _write_config(self) -> None:
        root = os.getuid() == 0
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            f"AllowUsers {self.user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            # PAM as non-root cannot work; as root it keeps a '!'-locked root usable.
            f"UsePAM {'yes' if root else 'no'}",
            "AllowTcpForwarding yes",
            "AllowStreamLocalForwarding yes",
            "PermitTTY yes",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "LogLevel DEBUG1",
            "Subsystem sftp internal-sftp",
            "MaxStartups 100",
            "MaxSessions 100",
        ]
        if self.extra_config:
            lines.append(self.extra_config)
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> SSHDInfo:
        if os.getuid() == 0 and not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._write_config()
        check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejected its test config: {check.stderr.strip()}")
        # -D: stay in the foreground as our child; -e -E: log to a file we can show on failure.
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_ready()
        return self.info

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not answer on port {self.port} within {START_TIMEOUT}s:\n{self.log_text()}")

    def stop(self) -> None:
        """Kill the listener and its per-connection children (all in its session)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout=5)

    def kill_sessions(self) -> None:
        """Kill every per-connection sshd process but keep the listener: a dropped transport.

        The whole tree, not just the listener's children: the process that holds
        the TCP socket after authentication is a grandchild of the listener.
        """
        assert self.proc is not None
        for pid in _descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

    @property
    def pty_supported(self) -> bool:
        """Whether this sshd can allocate PTYs.

        sshd chowns a new PTY to (user, tty group) and gives up the session when
        that fails, which it does for a non-root sshd unless the user is in the
        tty group.
        """
        if os.getuid() == 0:
            return True
        try:
            tty_gid = grp.getgrnam("tty").gr_gid
        except KeyError:
            return False
        return tty_gid in os.getgroups() or tty_gid == os.getgid()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no sshd log)"

    def __enter__(self) -> SSHDInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHDServer]:
    """A running server shared by a test module (keys generated once)."""
    reason = ssh_tools_available()
    if reason:
        pytest.skip(reason)
    server = SSHDServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sshd(sshd_server: SSHDServer) -> SSHDInfo:
    return sshd_server.info
