"""Host folders in the guest at the same path: virtio-9p where QEMU shares it, else reverse sshfs.

Reverse sshfs (the portable path, as Lima does it): in the guest,
`sshfs -o slave :HOSTPATH GUESTPATH` speaks SFTP on its stdin/stdout, which
are an SSH exec channel; on the host, that channel is piped to a local
`sftp-server` process (`-R` for read-only mounts). No sshd on the host, no
keys into the host, and the mount lives exactly as long as the channel: a
reconnect mounts it again. sshfs runs as root with allow_other so that root
in the guest (dockerd bind mounts) sees the files too; permissions are
checked by the host's sftp-server, which runs as the host user, and every
request that names a path outside the shared folder is refused on the host
before sftp-server sees it (sftpguard), since sftp-server alone would serve
the host's whole filesystem to root in the guest.

9p: when the QEMU command line carries a share (see qemu_shares) the guest
sees its tag in sysfs and the agent mounts it with the kernel's 9p client
instead; nothing runs on the host for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paramiko

from devenv.hostagent import sftpguard

log = logging.getLogger(__name__)

SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",  # Debian, Ubuntu
    "/usr/libexec/sftp-server",  # macOS
    "/usr/libexec/openssh/sftp-server",  # Fedora, RHEL
    "/usr/lib/ssh/sftp-server",  # Arch
)
NINEP_TAG_PREFIX = "devenv"
NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=262144,cache=mmap"
CHUNK = 256 * 1024


@dataclass(frozen=True)
class MountSpec:
    host_path: str
    guest_path: str
    writable: bool
    tag: str  # the 9p mount tag QEMU would carry for it


def mount_specs(mounts: Sequence[Any]) -> list[MountSpec]:
    """config.Mount entries -> specs; `~` expands on the host, an empty mount_point means the same path."""
    out = []
    for i, m in enumerate(mounts):
        host = os.path.abspath(os.path.expanduser(m.location))
        out.append(MountSpec(host, m.mount_point or host, bool(m.writable), f"{NINEP_TAG_PREFIX}{i}"))
    return out


def guest_cwd(specs: Sequence[MountSpec], cwd: str | None) -> str | None:
    """The host folder `cwd` as the guest sees it through a mount; None (the guest home) when no mount holds it.

    The one rule for `devenv exec`'s working directory, whichever path runs the command.
    """
    if not cwd:
        return None
    for spec in specs:
        root = spec.host_path.rstrip("/") or "/"
        if cwd == root or cwd.startswith(root + "/"):
            return spec.guest_path + cwd[len(root) :]
    return None


def qemu_shares(mounts: Sequence[Any]) -> tuple[tuple[str, str, bool], ...]:
    """What qemuargs.VmSpec.shares should get for these mounts: (tag, host path, writable)."""
    return tuple((s.tag, s.host_path, s.writable) for s in mount_specs(mounts))


BOOT_MOUNT_ARG = "devenv.mount"
# What provisioning/guest/mounts.sh splits on the kernel command line without quoting: no blank, quote,
# backslash or colon, nothing a shell would expand, and within the command line's 2 KiB (x86).
_BOOT_PATH = re.compile(r"/[A-Za-z0-9._/+@%,=-]{0,200}")
_BOOT_ARGS_MAX = 1024


def boot_mount_args(mounts: Sequence[Any]) -> str:
    """Kernel arguments that have the guest mount these 9p shares itself at boot (devenv-mounts.service).

    Then they are in place before the host logs in: mounting them after the login took a session
    of the guest's sshd, a shell and sudo, ~1.5 s under TCG after the guest was otherwise ready.
    A mount point the guest's script could not read back from the command line is left out, and
    mounted by the host agent after its login as before (mount_command finds the others mounted).
    """
    args: list[str] = []
    for spec in mount_specs(mounts):
        arg = f"{BOOT_MOUNT_ARG}={spec.tag}:{spec.guest_path}:{'rw' if spec.writable else 'ro'}"
        if _BOOT_PATH.fullmatch(spec.guest_path) and sum(len(a) + 1 for a in args) + len(arg) <= _BOOT_ARGS_MAX:
            args.append(arg)
    return " ".join(args)


def find_sftp_server() -> str | None:
    for path in SFTP_SERVERS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("sftp-server")


MOUNT_MARKER = "devenv-mount:"  # + 9p | sshfs | none, on the mount command's stderr
SFTP_INIT_SIZE = 9  # sshfs's first packet: length (4), SSH_FXP_INIT (1), version (4)


def mount_command(spec: MountSpec, *, sshfs: bool = True) -> str:
    """The one guest command a mount costs: one SSH channel, one sudo, none for a 9p share mounted at boot.

    As root it drops a stale mount left by a dropped connection and creates the
    mount point. Then, when QEMU shares this folder (its tag is in sysfs), it
    mounts it with the kernel's 9p client; else it becomes sshfs in slave mode,
    speaking SFTP on the channel's stdin/stdout. Its first line on stderr says
    which (MOUNT_MARKER + 9p, sshfs, or none when the guest has no sshfs).
    `sshfs=False` (the host has no sftp-server) stops after that line. Under
    TCG every sudo costs the guest ~0.35 s of CPU and every channel a shell,
    while the engine is still starting beside it; before, creating the mount
    point, mounting 9p and starting sshfs each took a sudo of their own, and
    sshfs a second channel.
    """
    g = shlex.quote(spec.guest_path)
    ro = "" if spec.writable else ",ro"
    # sshfs keeps what it learnt of a file for 20 s by default: an edit on the host then showed in the guest
    # with its new bytes but its old size (a server sent the old length). One second keeps the cache for a
    # burst of stats (git status) and shows an edit about as soon as 9p (cache=mmap) does.
    opts = ",".join(["slave", "allow_other", "dcache_timeout=1"] + ([] if spec.writable else ["ro"]))
    script = "\n".join(
        [
            "set -e",
            f"if mountpoint -q {g}; then umount -l {g} || true; fi",
            f"mkdir -p {g}",
            f"if grep -qsx {shlex.quote(spec.tag)} /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag; then",
            f"  mount -t 9p -o {NINEP_OPTIONS}{ro} {shlex.quote(spec.tag)} {g}",
            f"  echo {MOUNT_MARKER}9p >&2",
            "  exit 0",
            "fi",
            f"if ! command -v sshfs >/dev/null; then echo {MOUNT_MARKER}none >&2; exit 0; fi",
            f"echo {MOUNT_MARKER}sshfs >&2",
            f"exec sshfs -f -o {opts} :{shlex.quote(spec.host_path)} {g}" if sshfs else "exit 0",
        ]
    )
    # Mounted at boot by the guest itself (boot_mount_args): said at once, without sudo.
    booted = shlex.quote(f"{spec.tag} {spec.guest_path} 9p ")
    return (
        f"if grep -qsF {booted} /proc/mounts; then echo {MOUNT_MARKER}9p >&2; exit 0; fi; "
        f"exec sudo -n sh -c {shlex.quote(script)}"
    )


def read_mount_kind(channel: paramiko.Channel, timeout: float) -> tuple[str | None, bytes]:
    """The kind mount_command() announced on stderr (None if it ended or timed out first), and its other stderr."""
    marker = MOUNT_MARKER.encode()
    err = b""
    channel.settimeout(timeout)
    try:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            while data := channel.recv_stderr(4096):
                err += data
                before, found, rest = err.partition(marker)
                if found and b"\n" in rest:
                    kind, _, after = rest.partition(b"\n")
                    return kind.decode(errors="replace").strip(), before + after
        return None, err
    finally:
        channel.settimeout(None)  # sshfs's channel may stay quiet for hours


class SshfsMount:
    """One reverse-sshfs mount: an exec channel running sshfs <-> a local sftp-server process.

    `talking` is set once sshfs sent more than its INIT packet: it has the
    server's VERSION and is checking the remote folder, the step before it
    mounts, so that is when asking the guest whether it is mounted makes sense.
    """

    def __init__(self, spec: MountSpec, channel: paramiko.Channel, sftp_server: str, stderr: bytes = b"") -> None:
        self.spec = spec
        self.channel = channel
        self.talking = threading.Event()
        self._received = 0
        argv = [sftp_server, "-e", "-l", "ERROR"]
        if not spec.writable:
            argv.append("-R")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=spec.host_path,
            bufsize=0,
        )
        self.stderr = stderr
        self.guard = sftpguard.Guard(spec.host_path)
        self._send = threading.Lock()  # sftp-server's replies and the guard's refusals, whole packets each
        self._threads = [
            threading.Thread(target=self._to_guest, name="sftp-out", daemon=True),
            threading.Thread(target=self._to_host, name="sftp-in", daemon=True),
            threading.Thread(target=self._guest_stderr, name="sshfs-err", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _to_guest(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        try:
            while data := os.read(fd, CHUNK):
                buf += data
                packets = list(sftpguard.frames(buf))
                for packet in packets:
                    self.guard.replied(packet)
                if packets:
                    with self._send:
                        self.channel.sendall(b"".join(packets))
        except (OSError, EOFError, paramiko.SSHException, sftpguard.BadPacket):
            pass
        self.close()

    def _to_host(self) -> None:
        """The guest's requests to sftp-server, each let through or refused by the guard (sftpguard)."""
        assert self.proc.stdin is not None
        buf = bytearray()
        try:
            while data := self.channel.recv(CHUNK):
                buf += data
                passed: list[bytes] = []
                for packet in sftpguard.frames(buf):
                    if passed and sftpguard.may_wait(packet):
                        self._write(b"".join(passed))  # admit() may wait for these replies
                        passed = []
                    refusal = self.guard.admit(packet)
                    if refusal is None:
                        passed.append(packet)
                    else:
                        with self._send:
                            self.channel.sendall(refusal)
                if passed:
                    self._write(b"".join(passed))
                self._received += len(data)
                if self._received > SFTP_INIT_SIZE:
                    self.talking.set()
        except (OSError, EOFError, paramiko.SSHException, ValueError, sftpguard.BadPacket) as e:
            if isinstance(e, sftpguard.BadPacket):
                log.warning("closing the sshfs mount of %s: %s", self.spec.host_path, e)
        self.close()

    def _write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        view = memoryview(data)
        while view:
            view = view[self.proc.stdin.write(view) or 0 :]

    def _guest_stderr(self) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            while data := self.channel.recv_stderr(CHUNK):
                self.stderr = (self.stderr + data)[-4000:]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and not self.channel.closed

    def close(self) -> None:
        self.guard.close()
        with contextlib.suppress(Exception):
            self.channel.close()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()

    def join(self, timeout: float = 5.0) -> None:
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)
