"""The per-instance host agent: engine socket, port forwards, mounts, clock, fast exec.

This module is the API the rest of devenv calls; it imports only the stdlib
at module level (the `devenv exec` fast path imports devenv.hostagent.client,
which imports this package first). The daemon itself (paramiko and friends)
lives in daemon.py and runs in its own process: `python -m devenv.hostagent
INSTANCE_DIR`, started detached by launch() at the end of `devenv start` and
stopped by shutdown() (or by itself once the VM's process is gone).

    launch(inst_dir)            start (idempotent) and wait until connected -> state dict
    shutdown(inst_dir)          ask it to stop, then TERM/KILL; True when it is gone
    state(inst_dir)             {"alive", "state", "degraded", "forwards", "mounts", ...}
    suspend(inst_dir)           quiesce its SSH session for a save -> None, or why it cannot keep it
    resume(inst_dir)            the kept session on again after the restore -> None, or why not
    is_running(inst_dir)        the pid file is locked by a live agent
    docker_env(inst_dir)        {"DOCKER_HOST": "unix://.../sock/docker.sock"}
    ensure_docker_context(...)  create/update docker context devenv-NAME (never `docker context use`)
    ensure_podman_connection(...)  likewise podman's connection devenv-NAME (runtime = "podman")
    client.exec(...)            run a command over the agent's transport (stdlib only)
"""

from __future__ import annotations

import os
import sys
import time

from devenv.hostagent.wire import control_path, engine_path
from devenv.paths import EVENTS_LOG, HOSTAGENT_LOG, HOSTAGENT_PID

TYPE_CHECKING = False  # this package is imported on `devenv exec`'s hot path: pathlib/typing cost ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any

    from devenv.runner import Result

CONTEXT_PREFIX = "devenv-"

__all__ = [
    "control_path",
    "docker_env",
    "engine_path",
    "ensure_docker_context",
    "ensure_podman_connection",
    "is_running",
    "launch",
    "remove_docker_context",
    "remove_podman_connection",
    "shutdown",
    "state",
]


class AgentStartError(RuntimeError):
    """The agent process exited right after it was started; the message holds its log's tail."""


def is_running(inst_dir: Path) -> bool:
    """True while an agent holds the lock on hostagent.pid (a recycled pid can never fake it)."""
    from devenv.pidutil import try_lock, unlock

    try:
        fd = os.open(os.path.join(inst_dir, HOSTAGENT_PID), os.O_RDONLY)  # LockFile needs read access only
    except OSError:
        return False
    try:
        if not try_lock(fd, exclusive=False):
            return True
        unlock(fd)
        return False
    finally:
        os.close(fd)


def _pid(inst_dir: Path) -> int | None:
    try:
        with open(os.path.join(inst_dir, HOSTAGENT_PID), encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def state(inst_dir: Path, timeout: float = 3.0, *, guest_memory: bool = False) -> dict[str, Any]:
    """The agent's view for `devenv status`: state is connected | reconnecting | connecting | not running.

    `degraded` is true while it is not connected (status should say so); `forwards`
    rows have host, host_port, guest_port, source and status (active | failed + reason).
    `guest_memory`: also ask the guest for its MemTotal and MemAvailable (a round
    trip to the guest; start's polls of the agent go without it).
    """
    from devenv.hostagent import client

    st = client.state(inst_dir, timeout, guest_memory=guest_memory)
    if not st.get("alive") and is_running(inst_dir):
        st = {**st, "alive": True, "state": "unresponsive", "degraded": True, "pid": _pid(inst_dir)}
    return st


def log_tail(inst_dir: Path, lines: int = 15) -> str:
    try:
        with open(os.path.join(inst_dir, HOSTAGENT_LOG), encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def code_version(root: str | None = None) -> str:
    """A digest of devenv's own sources: the host agent reports the one it started with.

    An agent left running by another devenv build (an upgrade while the VM ran)
    speaks an older control protocol, which may ignore what a newer CLI asks
    (exec's `workdir`, say); `start` replaces it. All of devenv counts, since the
    daemon runs the transport and the guest agent's protocol too (~70 files, ~2 ms).
    """
    import hashlib

    base = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".py", ".c")):
                path = os.path.join(dirpath, name)
                digest.update(os.path.relpath(path, base).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()[:16]


def launch(
    inst_dir: Path,
    *,
    user: str = "devenv",
    wait: float = 60.0,
    extra_args: Sequence[str] = (),
    python: str | None = None,
) -> dict[str, Any]:
    """Start the agent unless one runs, wait until it is connected (or `wait` s pass); its state.

    Detached: a new session (on Windows no console), stdin from /dev/null, output to
    hostagent.log, so it survives the CLI and its ^C. Returns the state even when not yet connected
    (the caller shows "degraded"); raises AgentStartError when the process dies.
    """
    import subprocess
    from pathlib import Path

    from devenv import pidutil

    inst_dir = Path(inst_dir).absolute()
    if is_running(inst_dir):
        running = state(inst_dir, timeout=2.0)
        if running.get("state") != "unresponsive" and running.get("code") != code_version():
            from devenv.hostagent.events import EventLog

            EventLog(inst_dir / EVENTS_LOG).emit("host-agent-replaced", reason="started by another devenv build")
            shutdown(inst_dir)
    argv = [python or sys.executable, "-m", "devenv.hostagent", str(inst_dir), "--user", user, *extra_args]
    proc: subprocess.Popen[bytes] | None = None
    deadline = time.monotonic() + wait
    st: dict[str, Any] = {"alive": False}
    while True:
        # Spawned when none runs, and again when the one found running has exited since: an agent whose
        # VM was just killed lives on for up to a second (its watch's tick) and a start must not wait on it.
        if not is_running(inst_dir):
            if proc is not None and proc.poll() == 0:
                proc = None  # it left to another agent (its exit 0), which has exited too since: spawn again
            if proc is not None and proc.poll() is not None:
                raise AgentStartError(
                    f"the host agent exited with code {proc.returncode} right after it started:\n{log_tail(inst_dir)}"
                )
            if proc is None:
                with open(inst_dir / HOSTAGENT_LOG, "ab") as logf:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=logf,
                        stderr=logf,
                        close_fds=True,
                        cwd=str(inst_dir),
                        **pidutil.detached(),  # its own session; on Windows no console and no Ctrl-C of the CLI's
                    )
        st = state(inst_dir, timeout=2.0)
        if st.get("state") == "connected" or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def shutdown(inst_dir: Path, timeout: float = 10.0) -> bool:
    """Stop the agent: a shutdown request, then SIGTERM, then SIGKILL. True when none runs any more."""
    import contextlib
    import signal
    from pathlib import Path

    from devenv.hostagent import client

    inst_dir = Path(inst_dir).absolute()
    if not is_running(inst_dir):
        return True
    client.request(inst_dir, {"op": "shutdown"}, timeout=2.0)
    for sig in (None, signal.SIGTERM, getattr(signal, "SIGKILL", signal.SIGTERM)):  # Windows: TERM is the kill
        pid = _pid(inst_dir)
        if sig is not None and pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout / 2
        while time.monotonic() < deadline:
            if not is_running(inst_dir):
                return True
            time.sleep(0.05)
    return not is_running(inst_dir)


def suspend(inst_dir: Path) -> str | None:
    """Ask the agent to keep its SSH session across a save (relay.py): None when it will, else why not.

    The caller shuts down an agent that will not, as before any save.
    """
    if not is_running(inst_dir):
        return "no host agent runs"
    return _ask(inst_dir, "suspend", "suspended", timeout=15.0)


def resume(inst_dir: Path) -> str | None:
    """After a restore (or a save that failed): the suspended agent's session on again. None, or why not.

    An agent of another devenv build is not asked: start replaces it.
    """
    if not is_running(inst_dir):
        return "no host agent runs"
    running = state(inst_dir, timeout=2.0)
    if running.get("state") != "suspended":
        return f"the host agent is {running.get('state')}"
    if running.get("code") != code_version():
        return "the host agent was started by another devenv build"
    return _ask(inst_dir, "resume", "resumed", timeout=30.0)


def _ask(inst_dir: Path, op: str, done: str, timeout: float) -> str | None:
    """One control request whose reply says `done`: true, or why not."""
    from devenv.hostagent import client

    reply = client.request(inst_dir, {"op": op}, timeout=timeout)
    if reply is None:
        return "the host agent did not answer"
    if reply.get(done):
        return None
    return str(reply.get("reason") or reply.get("error") or "refused")


def add_forward(inst_dir: Path, host_port: int, guest_host: str, guest_port: int, source: str) -> dict[str, Any]:
    """A forward from 127.0.0.1:host_port to what the guest reaches at guest_host:guest_port; its status row.

    The row's status is "active", or "failed" with the reason (the host port is taken).
    """
    from devenv.errors import ConnectionFailed
    from devenv.hostagent import client

    msg = {"op": "forward", "host_port": host_port, "guest_host": guest_host, "guest_port": guest_port}
    reply = client.request(inst_dir, {**msg, "source": source}, timeout=10.0)
    if reply is None or not isinstance(reply.get("forward"), dict):
        why = "it did not answer" if reply is None else str(reply.get("error"))
        raise ConnectionFailed(f"the host agent could not add the forward of port {host_port}: {why}", "")
    row: dict[str, Any] = reply["forward"]
    return row


def docker_env(inst_dir: Path) -> dict[str, str]:
    """The exports that point the host's docker CLI at the guest engine through the agent."""
    return {"DOCKER_HOST": f"unix://{engine_path(os.path.abspath(inst_dir))}"}


def _docker(args: Sequence[str], docker: str) -> Result | None:
    """The docker (or podman) CLI through the one runner; None when it is missing or hangs (all optional)."""
    from devenv.errors import DevenvError
    from devenv.runner import run

    try:
        return run([docker, *args], timeout=30)
    except (DevenvError, OSError):
        return None


def ensure_docker_context(name: str, inst_dir: Path, docker: str = "docker") -> str | None:
    """Create or update docker context `devenv-NAME` for this instance; never switch to it.

    Returns the context name, or None when the docker CLI is missing or refused
    (the caller prints `devenv docker-env` as the alternative).
    """
    ctx = CONTEXT_PREFIX + name
    endpoint = f"host={docker_env(inst_dir)['DOCKER_HOST']}"
    exists = _docker(["context", "inspect", ctx], docker)
    if exists is None:
        return None
    if exists.returncode == 0:
        r = _docker(["context", "update", ctx, "--docker", endpoint], docker)
    else:
        r = _docker(
            ["context", "create", ctx, "--description", f"devenv instance {name}", "--docker", endpoint], docker
        )
    return ctx if r is not None and r.returncode == 0 else None


def ensure_podman_connection(name: str, inst_dir: Path, podman: str = "podman") -> str | None:
    """Podman's connection `devenv-NAME` to this instance's engine socket, so `podman --remote` reaches it.

    Returns its name, or None when podman is not on the host or refused.
    Made anew only when missing or pointing elsewhere, so a user's choice of
    it as the default connection stays. Podman makes the first connection it
    knows the default; devenv never changes which one is.
    """
    import json

    conn = CONTEXT_PREFIX + name
    uri = docker_env(inst_dir)["DOCKER_HOST"]
    listed = _docker(["system", "connection", "list", "--format", "json"], podman)
    if listed is None or listed.returncode != 0:
        return None
    try:
        rows = json.loads(listed.stdout or "[]") or []
    except ValueError:
        rows = []
    current = next((r for r in rows if isinstance(r, dict) and r.get("Name") == conn), None)
    if current is not None and current.get("URI") == uri:
        return conn
    if current is not None:
        _docker(["system", "connection", "remove", conn], podman)
    added = _docker(["system", "connection", "add", conn, uri], podman)
    return conn if added is not None and added.returncode == 0 else None


def remove_podman_connection(name: str, podman: str = "podman") -> bool:
    r = _docker(["system", "connection", "remove", CONTEXT_PREFIX + name], podman)
    return r is not None and r.returncode == 0


def remove_docker_context(name: str, docker: str = "docker") -> bool:
    r = _docker(["context", "rm", "--force", CONTEXT_PREFIX + name], docker)
    return r is not None and r.returncode == 0
