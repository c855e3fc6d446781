"""The host agent process: one per running instance, holding the one SSH transport.

Threads, each with one job (all daemon threads, all ended by shutdown()):
- main: the supervisor. Connects, notices a dead transport or guest agent
  (transport inactive, agent channel at EOF, or a ping unanswered for 10 s),
  reconnects with backoff (0.5 s doubling to 5 s), watches the VM's process
  (the agent exits with it) and the host clock.
- control: accepts on hostagent.sock; one short-lived thread per client.
- one accept thread per listener (engine socket, each forwarded port), and two
  pump threads per forwarded connection (forward.py).
- per SSH transport (GuestSession): the guest agent's reader and a dispatcher
  that routes its events (port changes, exec output) and the mount pumps.

Listeners outlive a reconnect: a client that connects while the transport is
down waits up to CHANNEL_WAIT seconds for the new one instead of getting
"connection refused". Everything the agent does that a user may want to
know lands in events.jsonl; its own diagnostics go to hostagent.log.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import importlib
import logging
import math
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import paramiko

from devenv import hostagent, hostdisk, paths
from devenv.errors import ConnectionFailed, DevenvError
from devenv.guestagent import protocol
from devenv.hostagent import fastports, mounts, relay, wire
from devenv.hostagent.clock import JumpDetector, detector_wall, resync_command
from devenv.hostagent.events import EventLog
from devenv.hostagent.fastexec import ExecRequest
from devenv.hostagent.fastports import FastPortError
from devenv.hostagent.forward import BridgeSet, Listener, bind_control_tcp, bind_unix
from devenv.hostagent.mounts import MountSpec
from devenv.hostagent.ports import AUTO_MIN_PORT, Forward, PortManager
from devenv.hostagent.relay import RelayStream, RelayUnavailable
from devenv.hostagent.session import GuestSession
from devenv.pidutil import claim, process_start
from devenv.provision.readiness import ConsoleWatch, ssh_banner, wait_for_sshd
from devenv.transport.ssh import SSHConnection, SSHTarget, open_streamlocal

log = logging.getLogger(__name__)

TICK = 0.5  # supervisor period: VM watch, clock check, liveness
KEEP_ALLOCATED_EVERY = 5.0  # how long a page the balloon gave back may stay without a block on disk
PING_EVERY = 5.0
CHANNEL_WAIT = 15.0  # how long a new forwarded connection waits for a reconnect
LINGER = 2.0  # how long a TCP control client gets to read the last answer and close (see _close_tcp_client)
BACKOFF_MIN, BACKOFF_MAX = 0.5, 5.0
RELOCATE_EVERY = 15.0  # s between two questions of the driver where sshd answers (each may run wsl.exe)
RELAY_WAIT_FIRST = 10.0  # for the relay of a guest not yet known to have one (its first boot starts it late)
RELAY_WAIT = 5.0  # for one that answered before
RELAY_TRIES = 2  # logins in a row a known relay may miss while sshd answers, before SSH over the network
QUIESCE_WAIT = 5.0  # for the guest to take what the agent sent before a suspend
MOUNTS_UNDER_WAY = ("mounting", "remounting")  # a mount row in these states settles to mounted or failed
RESUME_PING = 10.0  # for the guest agent to answer through the resumed session (a loaded TCG host is slow)


class _Stopped(Exception):
    """The agent stops, or the VM went away, while waiting for the guest to boot."""


@dataclass
class Options:
    inst_dir: Path
    user: str = "devenv"
    agent_command: str = field(default_factory=protocol.serve_command)
    engine_socket: str | None = None  # guest path; None: from the instance's runtime
    watch_pid_file: Path | None = None  # the VM's pid file; None: do not watch
    ssh_host: str = "127.0.0.1"  # where the guest's sshd answers
    ssh_port: int | None = None  # None: read INSTANCE_DIR/ssh.port at each connect
    ssh_proxy: tuple[str, ...] = ()  # a command that reaches sshd (a jump host; transport.ssh.SSHTarget.proxy)
    # the driver's "module:function(inst_dir, port) -> host", asked where sshd answers once logins keep
    # failing (AgentPlan.relocate); "": ssh_host is where it always answers
    relocate: str = ""
    console: Path | None = None  # the guest's console log, read for its readiness line before the first login
    # the guest was restored from a suspend: no boot to wait for, and its clock is behind by the time it
    # spent saved, so the first login sets it before anything else runs
    resumed: bool = False
    ports_interval: float = 0.5
    min_port: int = AUTO_MIN_PORT
    bind_host: str = "127.0.0.1"  # tests on a host that is its own "guest" use 127.0.0.2
    connect_timeout: float = 20.0
    env: dict[str, str] = field(default_factory=dict)
    explicit: dict[int, Forward] = field(default_factory=dict)
    mounts: list[MountSpec] = field(default_factory=list)
    rejected_ports: list[str] = field(default_factory=list)
    fast_ports: str = ""  # the driver's fast port path ("module:function", fastports.py); "": SSH only
    relay: Path | None = None  # the guest's SSH relay port as a unix socket (relay.py); None: SSH over the network
    memory_file: Path | None = None  # the guest's memory file, kept allocated on disk (hostdisk.keep_allocated)


# What a login may meet while the guest boots, reboots or its network drops: retried quietly.
EXPECTED_CONNECT_ERRORS = (DevenvError, OSError, EOFError, paramiko.SSHException)


def log_connect_failure(e: Exception, backoff: float) -> str:
    """Log a failed (re)connect and say what failed (the state's last_error).

    An expected failure is INFO, as it comes and goes with the guest. Anything
    else is a bug in devenv: ERROR with its traceback in hostagent.log, and
    last_error says so, so that it is not retried away unseen.
    """
    what = f"{type(e).__name__}: {e}"
    if isinstance(e, EXPECTED_CONNECT_ERRORS):
        log.info("connect failed (%s); retrying in %.1f s", what, backoff)
        return what
    log.error("connect failed on a bug in devenv (%s); retrying in %.1f s", what, backoff, exc_info=e)
    return f"internal error (a bug in devenv): {what}; its traceback is in hostagent.log"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


# --------------------------------------------------------------------------- per-transport state


# --------------------------------------------------------------------------- the agent


class HostAgent:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.inst_dir = opts.inst_dir
        self.code = hostagent.code_version()  # the sources this process runs: `start` replaces an agent of others
        self.events = EventLog(opts.inst_dir / paths.EVENTS_LOG)
        self.fast = self._fast_ports(opts)
        self.ports = PortManager(
            self.events, self.open_tcp, opts.explicit, opts.min_port, opts.bind_host, fast=self.fast
        )
        self.engine_bridges = BridgeSet()
        self.conn: SSHConnection | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._session: GuestSession | None = None
        self._state = "connecting"
        self._since = time.time()
        self._last_error: str | None = None
        self._reconnects = 0
        self._next_relocate = 0.0  # monotonic time before which the driver is not asked again
        # commands this agent started in the guest: tests tell an exec it served from one that fell back to SSH
        self._execs_spawned = 0
        self._execs_lock = threading.Lock()
        self._mounts: dict[str, dict[str, Any]] = {}
        self._listeners: list[Listener] = []
        self._control: socket.socket | None = None
        self._token: str | None = None  # set when the control channel is loopback TCP
        self._control_thread: threading.Thread | None = None
        self._pid_fd: int | None = None
        self._vm: tuple[int, str | None] | None = None
        self._clock = JumpDetector(wall=detector_wall(opts.inst_dir))
        self._next_keep = 0.0
        self._keep_failed = False
        self._relay: RelayStream | None = None  # the stream the current session runs over, when the relay's
        self._suspended = False  # quiesced for a save: the VM's exit is expected, the session is kept
        self._clock_behind = False  # a restored guest whose session was lost: the next login sets its clock
        self._relay_misses = 0  # consecutive logins the relay of a guest known to have one did not answer
        self.control_path = wire.control_path(opts.inst_dir)
        self.engine_path = wire.engine_path(opts.inst_dir)

    @staticmethod
    def _fast_ports(opts: Options) -> fastports.FastPorts | None:
        """The driver's fast port path; without it (it failed to load) every forward goes through SSH."""
        if not opts.fast_ports:
            return None
        try:
            return fastports.load(opts.fast_ports, opts.inst_dir)
        except Exception as e:  # a forward through SSH beats an agent that never starts
            log.warning("the fast port path %s did not load (%s): forwards go through SSH", opts.fast_ports, e)
            return None

    # -- channels for the forwards
    def wait_session(self, timeout: float) -> GuestSession | None:
        """The live session, waiting up to `timeout` for a (re)connect; None at once while suspended.

        A suspended guest answers nothing until `devenv start`: an exec or a
        forwarded connection then fails now, as it did when no agent ran, rather
        than hang on a session nobody may resume.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._suspended:
                s = self._session
                if s is not None and s.alive():
                    return s
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(min(remaining, TICK))
            return None

    def _transport(self) -> paramiko.Transport:
        s = self.wait_session(CHANNEL_WAIT)
        if s is None:
            raise ConnectionError("the guest is not connected")
        return s.transport

    def open_tcp(self, host: str, port: int) -> paramiko.Channel:
        return self._transport().open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=15)

    def open_engine(self) -> paramiko.Channel:
        assert self.opts.engine_socket is not None
        return open_streamlocal(self._transport(), self.opts.engine_socket, timeout=15)

    # -- state
    def mount_state(self, spec: MountSpec, st: str, **extra: Any) -> None:
        row = {"host": spec.host_path, "guest": spec.guest_path, "writable": spec.writable, "state": st, **extra}
        with self._cond:
            previous = self._mounts.get(spec.guest_path)
            if st in MOUNTS_UNDER_WAY and previous is not None and "type" in previous:
                row.setdefault("type", previous["type"])  # the kind it had, until it says again
            self._mounts[spec.guest_path] = row
            self._cond.notify_all()
        if previous is None or previous.get("state") != st:
            self.events.emit(f"mount-{'added' if st == 'mounted' else st}", **{k: v for k, v in row.items()})

    def wait_mounts(self, timeout: float) -> list[str]:
        """Wait up to `timeout` for the mounts under way; the guest paths of those still not settled.

        After a reconnect (a reboot inside, a dropped network) or a restore the
        session is back before the mounts are: a command run in that gap saw an
        empty project folder, or wrote its files into the guest's own disk.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                pending = [g for g, row in self._mounts.items() if row.get("state") in MOUNTS_UNDER_WAY]
                remaining = deadline - time.monotonic()
                if not pending or remaining <= 0 or self._stop.is_set():
                    return sorted(pending)
                self._cond.wait(min(remaining, TICK))

    def _set_state(self, st: str) -> None:
        with self._cond:
            if st != self._state:
                self._state = st
                self._since = time.time()
            self._cond.notify_all()

    def count_exec(self) -> None:
        with self._execs_lock:
            self._execs_spawned += 1

    def state(self, guest_memory: bool = False) -> dict[str, Any]:
        return {
            "alive": True,
            "pid": os.getpid(),
            "code": self.code,
            "state": self._state,
            "degraded": self._state != "connected",
            "since": _iso(self._since),
            "since_epoch": self._since,
            "last_error": self._last_error,
            "reconnects": self._reconnects,
            "execs_spawned": self._execs_spawned,
            "ssh_via": "relay" if self._relay is not None else "network",  # the relay's session survives a suspend
            "control": self._control_address(),
            "engine_socket": str(self.engine_path) if self.opts.engine_socket else None,
            "docker_host": f"unix://{self.engine_path}" if self.opts.engine_socket else None,
            "forwards": self.ports.snapshot(),
            "mounts": sorted(self._mounts.values(), key=lambda r: str(r["guest"])),
            "ignored_ports": list(self.opts.rejected_ports),
            **({"guest_memory": self._guest_memory()} if guest_memory else {}),
        }

    def _guest_memory(self) -> dict[str, Any] | None:
        """The guest's MemTotal and MemAvailable, asked now (status sets it beside QEMU's RSS)."""
        s = self._session
        if s is None or s.client is None or self._state != "connected":
            return None
        try:
            memory = s.client.call("memory", timeout=2)
        except DevenvError:  # an older guest agent, or a slow guest: status goes without it
            return None
        return memory if isinstance(memory, dict) else None

    def _control_address(self) -> str | None:
        if self._control is None:
            return None
        if self._token is None:
            return f"unix://{self.control_path}"
        return f"tcp://127.0.0.1:{self._control.getsockname()[1]} (token in {paths.HOSTAGENT_TOKEN})"

    # -- lifecycle
    def run(self) -> int:
        if not self._lock_pidfile():
            log.info("another host agent runs for %s; exiting", self.inst_dir)
            return 0
        try:
            self._install_signals()
            self._vm = self._read_vm()
            if self.opts.watch_pid_file is not None and self._vm is None:
                self.events.emit("agent-exit", reason="the VM is not running")
                return 1
            self._start_control()
            self._start_engine()
            if self.fast is not None:
                with contextlib.suppress(FastPortError):
                    if stale := self.fast.clear_stale(self.opts.bind_host):
                        log.info("removed %s forwards a previous agent left: %s", self.fast.via, stale)
            self.ports.reconcile()  # explicit forwards listen from the start
            self.events.emit("agent-started", pid=os.getpid())
            self._supervise()
            return 0
        finally:
            self._cleanup()

    def _supervise(self) -> None:
        backoff = BACKOFF_MIN
        next_ping = time.monotonic() + PING_EVERY
        while not self._stop.is_set():
            if self._suspended:  # the VM is being saved, or is saved: resume() or shutdown comes next
                self._stop.wait(TICK)
                continue
            if not self._vm_alive():
                self.events.emit("agent-exit", reason="the VM's process is gone")
                return
            s = self._session
            if s is not None and not s.alive():
                self._drop_session(s, "the SSH connection or the guest agent ended")
                s = None
            if s is None:
                try:
                    self._connect()
                    backoff = BACKOFF_MIN
                    next_ping = time.monotonic() + PING_EVERY
                except _Stopped:
                    continue  # told to stop, or the VM is gone: the loop's checks say which
                except Exception as e:
                    self._last_error = log_connect_failure(e, backoff)
                    self._relocate()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
            elif time.monotonic() >= next_ping:
                next_ping = time.monotonic() + PING_EVERY
                if not s.ping():
                    self._drop_session(s, "the guest agent stopped answering")
                    continue
            self._check_clock()
            self._keep_memory_allocated()
            self._stop.wait(TICK)

    def _connect(self) -> None:
        if self.conn is not None:
            self.conn.close()
        port = self.opts.ssh_port or int((self.inst_dir / paths.SSH_PORT).read_text().strip())
        if self.opts.ssh_host in ("127.0.0.1", "::1", "localhost"):
            self.ports.keep_off(port)  # SSH's own way in: taken on the host already (WSL: the same number)
        reconnect = self._reconnects > 0 or self._state == "reconnecting"
        took: dict[str, float] = {}
        t = time.monotonic()
        if not reconnect and not self.opts.resumed:
            self._await_boot(port)
            took["boot"] = time.monotonic() - t
            t = time.monotonic()
        target = SSHTarget.for_instance(
            self.inst_dir, port=port, user=self.opts.user, host=self.opts.ssh_host, proxy=self.opts.ssh_proxy
        )
        conn = self._open_connection(target)
        took["login"] = time.monotonic() - t
        t = time.monotonic()
        session = GuestSession(self, conn.transport)
        try:
            session.start()
        except BaseException:
            session.close()
            raise
        took["guest_agent"] = time.monotonic() - t
        if (self.opts.resumed and not reconnect) or self._clock_behind:
            self._resync_clock(session, None)  # before the first exec can see the old time
            self._clock_behind = False
        with self._cond:
            self._session = session
        self._last_error = None
        self._set_state("connected")
        seconds = {k: round(v, 3) for k, v in took.items()}
        self.events.emit("connected", reconnect=reconnect, ssh_port=port, seconds=seconds)
        self._reconnects += 1 if reconnect else 0

    def _relocate(self) -> None:
        """After a failed login (itself retried for connect_timeout), ask the driver where sshd answers now; go there.

        WSL's localhost forwarding dies when Windows sleeps, and the distro's
        own address changes with each WSL restart: without this a running
        agent would dial the dead address until the next `devenv start` chose
        again. A driver without the question (opts.relocate "") is never asked;
        an answer of "" or a failing question leaves the address as it is.
        """
        if not self.opts.relocate or time.monotonic() < self._next_relocate:
            return
        self._next_relocate = time.monotonic() + RELOCATE_EVERY
        try:
            port = self.opts.ssh_port or int((self.inst_dir / paths.SSH_PORT).read_text().strip())
            module_name, _, function = self.opts.relocate.partition(":")
            host = str(getattr(importlib.import_module(module_name), function)(self.inst_dir, port) or "")
        except Exception as e:  # the question is the driver's: its failure is logged, never the agent's end
            log.warning("could not ask where the guest's sshd answers now (%s: %s)", type(e).__name__, e)
            return
        if host and host != self.opts.ssh_host:
            log.info("the guest's sshd answers at %s:%d now, not %s: logging in there", host, port, self.opts.ssh_host)
            self.events.emit("relocated", host=host, previous=self.opts.ssh_host, ssh_port=port)
            self.opts.ssh_host = host

    def _open_connection(self, target: SSHTarget) -> SSHConnection:
        """SSH through the relay port when this guest has one (the session then survives a suspend), else TCP.

        Whether it has one is learnt once and kept in RELAY_STATE: a guest
        provisioned before devenv shipped the relay never answers, and would
        otherwise cost every start the wait.
        """
        self._relay = None
        opener = self._relay_opener()
        if opener is not None:
            conn = SSHConnection(target, boot_timeout=self.opts.connect_timeout, keepalive=5, opener=opener)
            self.conn = conn
            try:
                conn.connect(self.opts.connect_timeout)
                self._remember_relay("ok")
                self._relay_misses = 0
                return conn
            except RelayUnavailable as e:
                conn.close()
                self._relay = None
                known = self._relay_known()
                if known == "ok":
                    # A guest that had a relay is booting again (a reboot from inside): the relay comes
                    # up with sshd, and a session over the network would not live through the next
                    # suspend. Retried as any login while sshd is silent too; once sshd answers and the
                    # relay still does not, RELAY_TRIES times, SSH goes over the network.
                    sshd_up = ssh_banner(target.port, host=target.host, proxy=target.proxy)
                    self._relay_misses += 1 if sshd_up else 0
                    if not sshd_up or self._relay_misses < RELAY_TRIES:
                        raise ConnectionFailed(f"the SSH relay does not answer yet: {e}") from None
                log.info("SSH relay unavailable (%s); SSH over the network", e)
                self.events.emit("relay-unavailable", reason=str(e))
                if known is None:
                    self._remember_relay("absent")
        conn = SSHConnection(target, boot_timeout=self.opts.connect_timeout, keepalive=5)
        self.conn = conn
        conn.connect(self.opts.connect_timeout)
        return conn

    def _relay_known(self) -> str | None:
        try:
            return (self.inst_dir / paths.RELAY_STATE).read_text().strip() or None
        except OSError:
            return None

    def _remember_relay(self, known: str) -> None:
        if self._relay_known() != known:
            with contextlib.suppress(OSError):
                (self.inst_dir / paths.RELAY_STATE).write_text(known + "\n")

    def _relay_opener(self) -> Callable[[], RelayStream] | None:
        path = self.opts.relay
        known = self._relay_known()
        if path is None or known == "absent" or not relay.usable(path):
            return None
        wait = RELAY_WAIT if known == "ok" else RELAY_WAIT_FIRST

        def open_stream() -> RelayStream:
            stream = RelayStream(path, wait)
            self._relay = stream
            return stream

        return open_stream

    # -- around a suspend: the session is kept, only the VM's process is replaced
    def suspend(self, timeout: float = QUIESCE_WAIT) -> dict[str, Any]:
        """Quiesce the session for a save; {"suspended": False, "reason"} when it cannot survive one.

        The caller then shuts this agent down and a new one logs in after the restore.
        """
        s, stream = self._session, self._relay
        if s is None or not s.alive() or self._state != "connected":
            return {"suspended": False, "reason": f"the host agent is {self._state}"}
        if stream is None or s.transport.sock is not stream:
            return {"suspended": False, "reason": "the SSH session goes over the network, which a save ends"}
        self._suspended = True
        if not stream.quiesce(timeout):
            self._suspended = False
            return {"suspended": False, "reason": "the guest did not take what the host agent sent"}
        self._set_state("suspended")
        self.events.emit("agent-suspended")
        return {"suspended": True}

    def resume(self) -> dict[str, Any]:
        """The session on again after a restore (or a save that did not happen); {"resumed": False} if lost.

        A lost session is dropped: the supervisor logs in anew as after any
        drop, and the caller waits for it as for a fresh agent.
        """
        if not self._suspended:
            return {"resumed": False, "reason": "the host agent was not suspended"}
        began = time.monotonic()
        s, stream = self._session, self._relay
        vm = self._read_vm()
        replaced = vm != self._vm
        self._vm = vm
        error = None
        try:
            if stream is None or s is None:
                error = "no session"
            elif replaced:
                stream.reattach(set_clock="clock" in stream.features)
            else:
                stream.release()
        except OSError as e:
            error = f"cannot reach the restored VM's relay port: {e}"
        if error is None and s is not None and not s.ping(RESUME_PING):
            error = "the guest agent did not answer through the resumed session"
        self._suspended = False
        if error is not None or s is None:
            self._clock_behind = replaced
            if s is not None:
                self._drop_session(s, error or "no session")
            self.events.emit("agent-resumed", kept_session=False, reason=error)
            return {"resumed": False, "reason": error}
        took = {"session": time.monotonic() - began}
        if replaced:
            if stream is not None and "clock" in stream.features:  # set by the relay as it reattached
                self.events.emit("clock-resync", resumed=True, ok=True, via="relay")
            else:
                self._resync_clock(s, None)
                took["clock"] = time.monotonic() - began - sum(took.values())
            self.fast = self._fast_ports(self.opts)
            if self.fast is not None:
                with contextlib.suppress(FastPortError):
                    self.fast.clear_stale(self.opts.bind_host)
            self.ports.rehome_fast(self.fast)
            took["forwards"] = time.monotonic() - began - sum(took.values())
            s.remount(lambda spec: self._mounts.get(spec.guest_path, {}).get("type") == "9p")
        self._set_state("connected")
        seconds = {k: round(v, 3) for k, v in took.items()}
        self.events.emit("agent-resumed", kept_session=True, vm_replaced=replaced, seconds=seconds)
        return {"resumed": True}

    def _await_boot(self, port: int) -> None:
        """The first login of this agent waits for the guest to say its sshd is up.

        Launched while the guest boots, an agent that dialled at once got a
        connection QEMU's user-mode net held without an answer, and sat on it
        for the banner wait (~10 s after sshd was up, measured). The console's
        readiness line (--console; QEMU's serial.log is fresh each boot) says when;
        a guest that stays silent is dialled at the end of the wait, as on a reconnect.
        The port is never probed here: the agent is launched during a boot
        only for a provisioned guest, which announces, and otherwise after the
        line was seen, so a probe would only cost the guest an sshd child.
        """
        serial = self.opts.console
        if serial is None or not serial.exists():
            return  # no console to read: dial at once

        def stop_early() -> None:
            if self._stop.is_set() or not self._vm_alive():
                raise _Stopped

        wait_for_sshd(  # _Stopped goes up to _supervise: no login is tried for an agent told to stop
            ConsoleWatch(serial),
            port,
            time.monotonic() + self.opts.connect_timeout * 3,
            tick=stop_early,
            first_probe_after=math.inf,
            host=self.opts.ssh_host,
        )

    def _drop_session(self, s: GuestSession, reason: str) -> None:
        with self._cond:
            if self._session is s:
                self._session = None
        self._set_state("reconnecting")
        self._last_error = reason
        self.events.emit("disconnected", reason=reason)
        s.close()
        with self._cond:
            for row in self._mounts.values():
                row["state"] = "remounting"
        if self.conn is not None:
            self.conn.close()

    def _keep_memory_allocated(self) -> None:
        """Refill the holes the balloon punched in the guest's memory file, so a full disk pauses, never kills.

        A page fault on a hole with the disk full is a SIGBUS that kills QEMU
        (the guest and what it had not written are lost); with the block
        there, the guest's disk writes are what meets the full disk, and QEMU
        pauses the guest on them instead.
        """
        if self.opts.memory_file is None or time.monotonic() < self._next_keep:
            return
        self._next_keep = time.monotonic() + KEEP_ALLOCATED_EVERY
        if hostdisk.keep_allocated(self.opts.memory_file):
            self._keep_failed = False
        elif not self._keep_failed:
            self._keep_failed = True
            log.warning("the host disk is full: %s cannot keep its blocks", self.opts.memory_file)

    def _check_clock(self) -> None:
        jump = self._clock.check()
        if jump is not None:
            self._resync_clock(self._session, jump)

    def _resync_clock(self, s: GuestSession | None, jump: float | None) -> None:
        """The guest's clock set to the host's: after a host clock jump (`jump` s), or a restore (None)."""
        ok = False
        detail = ""
        if s is not None and s.client is not None:
            try:
                r = s.client.call("exec", {"argv": resync_command(time.time())}, timeout=30)
                ok = isinstance(r, dict) and r.get("exit_code") == 0
                if not ok and isinstance(r, dict):
                    detail = base64.b64decode(r.get("stderr", "")).decode(errors="replace").strip()[-200:]
            except DevenvError as e:
                detail = str(e)
        why = {"resumed": True} if jump is None else {"jump_seconds": round(jump, 3)}
        self.events.emit("clock-resync", **why, ok=ok, detail=detail or None)

    # -- the VM watch
    def _read_vm(self) -> tuple[int, str | None] | None:
        f = self.opts.watch_pid_file
        if f is None:
            return None
        try:
            pid = int(f.read_text().strip())
        except (OSError, ValueError):
            return None
        start = process_start(pid)
        return None if start is None else (pid, start)

    def _vm_alive(self) -> bool:
        if self.opts.watch_pid_file is None:
            return True
        if self._vm is None:
            return False
        pid, start = self._vm
        return process_start(pid) == start

    # -- pid file: an flock held for life, so "alive" never trusts a recycled pid
    def _lock_pidfile(self) -> bool:
        self._pid_fd = claim(self.inst_dir / paths.HOSTAGENT_PID, f"{os.getpid()}\n")
        return self._pid_fd is not None

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(_signum: int, _frame: FrameType | None) -> None:
            self._stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if sys.platform != "win32":
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def request_stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def _cleanup(self) -> None:
        self._stop.set()
        if self._suspended and self._relay is not None:
            self._relay.close()  # the saved guest answers nothing: every wait on it ends now
        self._set_state("stopping")
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.close()
            with contextlib.suppress(OSError):
                if self._token is None:
                    self.control_path.unlink()
                else:
                    os.unlink(wire.token_str(self.inst_dir))
        for listener in self._listeners:
            listener.close()
        self.engine_bridges.close_all()
        with contextlib.suppress(OSError):
            if self.opts.engine_socket:
                self.engine_path.unlink()
        self.ports.close()
        s, self._session = self._session, None
        if s is not None:
            s.close()
        if self.conn is not None:
            self.conn.close()
        if self._control_thread is not None and self._control_thread is not threading.current_thread():
            self._control_thread.join(2)
        if self._pid_fd is not None:
            self.events.emit("agent-stopped", pid=os.getpid())
            with contextlib.suppress(OSError):
                (self.inst_dir / paths.HOSTAGENT_PID).unlink()
            os.close(self._pid_fd)
            self._pid_fd = None

    # -- sockets on the host
    def _start_engine(self) -> None:
        if not self.opts.engine_socket:
            return
        sock = bind_unix(self.engine_path)
        self._listeners.append(Listener(sock, "engine", self.open_engine, self.engine_bridges).start())

    def _start_control(self) -> None:
        if wire.control_uses_tcp():
            self._control, self._token = bind_control_tcp(self.inst_dir)
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(self.control_path).st_mode):
                    self.control_path.unlink()  # a stale unix socket would be tried first
        else:
            with contextlib.suppress(OSError):
                os.unlink(wire.token_str(self.inst_dir))
            self._control = bind_unix(self.control_path)
        self._control.settimeout(TICK)
        self._control_thread = threading.Thread(target=self._control_loop, name="control", daemon=True)
        self._control_thread.start()

    def _control_loop(self) -> None:
        assert self._control is not None
        while not self._stop.is_set():
            try:
                client, _ = self._control.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(TICK)
                continue
            threading.Thread(target=self._serve_control, args=(client,), name="control-client", daemon=True).start()

    def _serve_control(self, client: socket.socket) -> None:
        fds: list[int] = []
        tcp = self._token is not None
        try:
            if tcp:  # each answer line goes out now, not after the previous one's ACK
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.settimeout(30)
            if self._token is None and sys.platform != "win32":
                data, fds, _flags, _addr = socket.recv_fds(client, 65536, 3)
            else:
                data = client.recv(65536)
            reader = wire.LineReader(client)
            reader.buf = data
            try:
                msg = wire.decode(reader.readline())
            except ValueError as e:  # not JSON, not an object, not UTF-8, cut short, or over MAX_LINE
                log.info("control client sent a bad request: %s", e)
                client.sendall(wire.encode({"final": True, "error": f"bad request: {e}", "code": 2}))
                return
            if self._token is not None and not hmac.compare_digest(
                str(msg.get("token", "")).encode(), self._token.encode()
            ):
                log.info("control client refused: wrong or missing token")
                client.sendall(wire.encode({"final": True, "error": "wrong control token", "code": 77}))
                return
            op = msg.get("op")
            if op == "exec":
                streamed = bool(msg.get("stream"))
                if not streamed and len(fds) != 3:
                    client.sendall(wire.encode({"final": True, "error": "exec needs 3 file descriptors", "code": 255}))
                    return
                client.settimeout(None)
                request = ExecRequest(self, client, reader, msg, None if streamed else fds)
                fds = []  # closed by ExecRequest
                request.send({**request.run(), "final": True})  # a stdin ack may still be on its way
                return
            reply: dict[str, Any]
            if op == "state":
                reply = {"state": self.state(guest_memory=bool(msg.get("guest_memory")))}
            elif op == "ping":
                reply = {"pong": True}
            elif op == "suspend":
                reply = self.suspend()
            elif op == "resume":
                reply = self.resume()
            elif op == "forward":
                reply = self._add_forward(msg)
            elif op == "shutdown":
                reply = {"stopping": True}
                self.request_stop()
            else:
                reply = {"error": f"unknown op {op!r}", "code": 2}
            client.sendall(wire.encode({**reply, "final": True}))
        except Exception as e:  # one bad client never takes the agent down
            log.info("control client failed: %s: %s", type(e).__name__, e)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if tcp:
                _close_tcp_client(client)
            with contextlib.suppress(OSError):
                client.close()

    def _add_forward(self, msg: dict[str, Any]) -> dict[str, Any]:
        """127.0.0.1:host_port to guest_host:guest_port as the guest dials it (a dev container's address)."""
        host_port, guest_port, guest_host = msg.get("host_port"), msg.get("guest_port"), msg.get("guest_host")
        ports_ok = all(isinstance(p, int) and 1 <= p <= 65535 for p in (host_port, guest_port))
        if not ports_ok or not isinstance(guest_host, str) or not guest_host:
            return {"error": "forward needs host_port, guest_port (1-65535) and guest_host", "code": 2}
        assert isinstance(host_port, int) and isinstance(guest_port, int)
        source = str(msg.get("source") or "request")
        return {"forward": self.ports.add_forward(Forward(host_port, guest_port, guest_host, source))}

    def guest_cwd(self, cwd: str | None) -> str | None:
        return mounts.guest_cwd(self.opts.mounts, cwd)


def _close_tcp_client(client: socket.socket) -> None:
    """Let a TCP client read our last line before the socket closes.

    Closing a TCP socket with input still unread (a stdin EOF line or a signal
    the client sent as its command ended) makes the kernel answer with a RST,
    and what was still queued to go out, the final line with the exit code,
    is lost: the client then reports a lost connection for a command that
    finished. So: end our side (FIN after the queued data), then read and
    drop what the client still sends until it closes, at most LINGER seconds.
    A unix socket has no such reset.
    """
    try:
        client.shutdown(socket.SHUT_WR)
        client.settimeout(LINGER)
        while client.recv(65536):
            pass
    except OSError:
        return
