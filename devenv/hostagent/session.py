"""One SSH transport's worth of the host agent: the guest agent channel, its events, the mounts.

A new GuestSession starts with every (re)connect and dies with its transport;
the agent (daemon.py) keeps what outlives it: listeners, forwards, state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shlex
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paramiko

from devenv.errors import ConnectionFailed, DevenvError, Timeout
from devenv.guestagent import protocol
from devenv.hostagent.mounts import MountSpec, SshfsMount, find_sftp_server, mount_command, read_mount_kind
from devenv.transport.ssh import open_streamlocal

if TYPE_CHECKING:
    from devenv.hostagent.daemon import HostAgent

log = logging.getLogger(__name__)

PING_TIMEOUT = 10.0
MOUNT_WAIT = 20.0


class AgentBridger:
    """Loopback bridges of this session's guest agent (ports.py): they end with the agent, i.e. this session."""

    TIMEOUT = 15.0

    def __init__(self, client: protocol.AgentClient) -> None:
        self.client = client

    def open(self, guest_host: str, guest_port: int, peer: str) -> tuple[str, int]:
        r = self.client.call("bridge_open", {"port": guest_port, "host": guest_host, "peer": peer}, self.TIMEOUT)
        return str(r["address"]), int(r["port"])

    def close(self, bridge_port: int) -> None:
        self.client.call("bridge_close", {"port": bridge_port}, self.TIMEOUT)


class ChannelWriter:
    """The guest agent's input: what is written goes out at flush(), close() sends EOF.

    Not paramiko's makefile_stdin(): that file's __del__ closes it again (paramiko's close
    does not look whether it already ran) and flushes a buffer the interpreter may have
    torn down at exit, so every host agent's log ended in a traceback ("Exception ignored
    in BufferedFile.__del__ ... I/O operation on closed file").
    """

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def flush(self) -> None:
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            self._channel.sendall(data)

    def close(self) -> None:
        self.flush()
        self._channel.shutdown_write()


class GuestSession:
    """Everything tied to one SSH transport: the guest agent channel, its events, the mounts."""

    def __init__(self, agent: HostAgent, transport: paramiko.Transport) -> None:
        self.agent = agent
        self.transport = transport
        self.dead = threading.Event()
        self.channel: paramiko.Channel | None = None
        self.client: protocol.AgentClient | None = None
        self.can_spawn = False
        self._routes: dict[Any, queue.Queue[tuple[str, Any]]] = {}
        self._early: dict[Any, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._mounts: list[SshfsMount] = []
        self._threads: list[threading.Thread] = []

    # -- start / stop
    def start(self) -> GuestSession:
        if self.agent.opts.mounts:  # independent of the guest agent: start them first, they take longest
            for spec in self.agent.opts.mounts:  # under way before anyone sees this session: exec waits for them
                self.agent.mount_state(spec, "mounting")
            self._thread(self._mount_all, "mounts")
        client = self._start_guest_agent()
        self.client = client
        self.can_spawn = True  # absent in an old agent: spawn then answers unknown_method
        self._thread(self._dispatch, "dispatch")
        hello = client.hello
        self.agent.ports.set_bridger(AgentBridger(client) if hello is not None and "bridge" in hello.features else None)
        result = client.call("watch_ports", {"interval": self.agent.opts.ports_interval}, timeout=30)
        self.agent.ports.set_guest_ports(result.get("ports", []) if isinstance(result, dict) else [])
        return self

    def _start_guest_agent(self) -> protocol.AgentClient:
        """Connect to the guest agent; if its hello shows another version than ours, install ours and reconnect.

        The hello carries the agent's protocol and sha256 (protocol.check_hello), so a
        current agent costs no extra round trip.
        """
        ours = self.agent.opts.agent_command == protocol.serve_command()  # else a test's stand-in guest
        for attempt in (1, 2):
            channel = self._open_guest_agent()
            client = protocol.AgentClient(channel.makefile("rb"), ChannelWriter(channel))
            try:
                reason = protocol.check_hello(client.start())
                usable = True  # same protocol; at worst another build of the agent
            except protocol.ProtocolError as e:
                reason, usable = str(e), False
            except Exception:
                channel.close()
                raise
            if reason is None or (usable and (attempt == 2 or not ours)):
                self.channel = channel
                return client
            channel.close()
            if attempt == 2 or not ours:
                raise ConnectionFailed(reason, "restart the instance with `devenv restart`")
            self._install_guest_agent(reason)
        raise AssertionError("unreachable")  # pragma: no cover

    def _open_guest_agent(self) -> paramiko.Channel:
        """The guest agent's systemd socket when the guest has it, else the agent run on an exec channel.

        Both carry the same JSON lines; the socket unit (provisioning/systemd) is what
        provisioning installs, the exec channel serves guests provisioned before it
        and the tests' stand-in guest (--agent-command).
        """
        if self.agent.opts.agent_command == protocol.serve_command():
            try:
                return open_streamlocal(self.transport, protocol.GUEST_SOCKET, timeout=15)
            except (ConnectionFailed, paramiko.SSHException, OSError, EOFError) as e:
                log.info("no guest agent socket (%s); running the agent on an exec channel", e)
        channel = self.transport.open_session(timeout=30)
        channel.exec_command(self.agent.opts.agent_command)
        return channel

    def _install_guest_agent(self, reason: str) -> None:
        ch = self.transport.open_session(timeout=30)
        try:
            ch.settimeout(60)
            ch.exec_command(protocol.install_command())
            ch.sendall(protocol.agent_source())
            ch.shutdown_write()
            while ch.recv(65536):
                pass
            status = ch.recv_exit_status()
        finally:
            ch.close()
        self.agent.events.emit("guest-agent-installed", reason=reason, exit_code=status)
        if status != 0:
            raise ConnectionError(f"installing the guest agent failed with exit code {status}")

    def _thread(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def alive(self) -> bool:
        if self.dead.is_set() or not self.transport.is_active():
            return False
        ch = self.channel
        return ch is not None and not ch.closed and not ch.eof_received

    def close(self) -> None:
        self.dead.set()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.channel is not None:
            with contextlib.suppress(Exception):
                self.channel.close()
        for m in self._mounts:
            m.close()
        for m in self._mounts:
            m.join(2)
        self._fail_routes()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(5)

    def ping(self, timeout: float = PING_TIMEOUT) -> bool:
        """Whether the guest agent is alive: it answered, or kept sending while the answer was late.

        Under load (a GiB of exec output, many execs at once, a TCG guest on a
        busy host) the answer waits behind the output already on its way; a
        session dropped then cut every running exec short with "lost the
        connection" although nothing was wrong.
        """
        if self.client is None:
            return False
        asked = time.monotonic()
        try:
            self.client.call("ping", timeout=timeout)
            return True
        except Timeout as e:
            # Still sending means still reading too: output stops within a window unless its acks are read.
            if self.client.last_heard > asked and not self.dead.is_set():
                log.info("guest agent answered no ping within %.0f s but is sending: busy, not gone", timeout)
                return True
            log.warning("guest agent did not answer a ping: %s", e)
            return False
        except DevenvError as e:
            log.warning("guest agent did not answer a ping: %s", e)
            return False

    # -- events from the guest agent
    def _dispatch(self) -> None:
        client = self.client
        assert client is not None
        while True:
            ev = client.next_event(timeout=0.5)
            if ev is None:
                ch = self.channel
                ended = self.dead.is_set() or ch is None or ch.closed or ch.eof_received
                if ended and client.events.empty():
                    break
                continue
            kind = ev.get("event")
            if kind == "ports":
                self.agent.ports.apply_event(ev.get("added") or [], ev.get("removed") or [])
            elif kind in ("output", "exit"):
                self._route(ev)
        self.dead.set()
        self._fail_routes()

    def _route(self, ev: dict[str, Any]) -> None:
        sub = ev.get("subscription")
        with self._lock:
            q = self._routes.get(sub)
            if q is None:  # spawn's answer not yet handed to its caller: keep until attach()
                early = self._early.setdefault(sub, [])
                if len(early) < 10000:
                    early.append(ev)
                return
        q.put(("event", ev))

    def attach(self, proc_id: Any) -> queue.Queue[tuple[str, Any]]:
        q: queue.Queue[tuple[str, Any]] = queue.Queue()
        with self._lock:
            for ev in self._early.pop(proc_id, []):
                q.put(("event", ev))
            self._routes[proc_id] = q
            if self.dead.is_set():
                q.put(("lost", None))
        return q

    def detach(self, proc_id: Any) -> None:
        with self._lock:
            self._routes.pop(proc_id, None)
            self._early.pop(proc_id, None)

    def _fail_routes(self) -> None:
        with self._lock:
            routes = list(self._routes.values())
        for q in routes:
            q.put(("lost", None))

    # -- commands on this transport
    def run(self, script: str, timeout: float = 60.0) -> tuple[int, bytes, bytes]:
        """A short shell command on a plain session channel of this transport."""
        ch = self.transport.open_session(timeout=30)
        try:
            ch.settimeout(timeout)
            ch.exec_command(script)
            ch.shutdown_write()
            out, err = b"", b""
            while True:
                data = ch.recv(65536)
                if not data:
                    break
                out += data
            while ch.recv_stderr_ready() or not ch.exit_status_ready():
                data = ch.recv_stderr(65536)
                if not data:
                    break
                err += data
            ch.status_event.wait(timeout)
            return int(ch.exit_status), out, err
        finally:
            ch.close()

    def remount(self, which: Callable[[MountSpec], bool]) -> None:
        """Mount again, in the background, the mounts `which` picks (a suspend unmounted the 9p ones)."""
        specs = [spec for spec in self.agent.opts.mounts if which(spec)]
        for spec in specs:
            self.agent.mount_state(spec, "mounting")
        if specs:
            self._thread(lambda: self._mount_all(specs), "remount")

    def _mount_all(self, specs: list[MountSpec] | None = None) -> None:
        for spec in self.agent.opts.mounts if specs is None else specs:
            if self.dead.is_set():
                return
            try:
                self._mount(spec)
            except Exception as e:  # one mount failing never stops the others
                self.agent.mount_state(spec, "failed", reason=f"{type(e).__name__}: {e}")

    def _mount(self, spec: MountSpec) -> None:
        if not os.path.isdir(spec.host_path):
            self.agent.mount_state(spec, "failed", reason=f"{spec.host_path} is not a directory on the host")
            return
        server = find_sftp_server()
        ch = self.transport.open_session(timeout=30)
        ch.exec_command(mount_command(spec, sshfs=server is not None))
        kind, err = read_mount_kind(ch, MOUNT_WAIT)
        if kind == "sshfs" and server is not None:
            self._await_sshfs(SshfsMount(spec, ch, server, stderr=err))
            return
        ended = ch.status_event.wait(5)  # it has ended, unless it said nothing
        ch.close()
        if kind == "9p":
            self.agent.mount_state(spec, "mounted", type="9p")
            return
        said = err.decode(errors="replace").strip()[-300:]
        said = said or (f"exit code {ch.exit_status}" if ended else f"no answer within {MOUNT_WAIT:.0f} s")
        reason = {
            "none": "the guest has no 9p share for this folder and no sshfs (the image needs the sshfs package)",
            "sshfs": "no sftp-server on the host (install openssh)",
        }.get(kind or "", f"preparing the mount point failed: {said}")
        self.agent.mount_state(spec, "failed", reason=reason)

    def _mountpoint(self, path: str) -> int:
        """`mountpoint -q PATH`'s exit code: through the guest agent once it answers, else on an SSH channel.

        The agent runs it as a child of its own; a channel costs the guest's sshd a session and a
        login shell (~0.5 s under TCG while the guest still starts its engine).
        """
        client = self.client
        if client is not None:
            with contextlib.suppress(protocol.AgentError, ConnectionFailed, Timeout, KeyError, TypeError, ValueError):
                r = client.call("exec", {"argv": ["mountpoint", "-q", path], "timeout": 10}, timeout=15)
                return int(r["exit_code"])
        code, _, _ = self.run(f"mountpoint -q {shlex.quote(path)}", timeout=15)
        return code

    def _await_sshfs(self, mount: SshfsMount) -> None:
        spec = mount.spec
        self._mounts.append(mount)
        deadline = time.monotonic() + MOUNT_WAIT
        while not mount.talking.wait(0.1) and mount.alive and time.monotonic() < deadline:
            pass  # asking before sshfs checked the folder would only cost the guest a shell
        while time.monotonic() < deadline and not self.dead.is_set():
            if not mount.alive:
                break
            code = self._mountpoint(spec.guest_path)
            if code == 0:
                self.agent.mount_state(spec, "mounted", type="sshfs")
                return
            time.sleep(0.3)
        reason = mount.stderr.decode(errors="replace").strip()[-300:] or "sshfs did not mount in time"
        mount.close()
        self.agent.mount_state(spec, "failed", reason=reason)
