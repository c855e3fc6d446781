#!/usr/bin/env python3
"""devenv guest agent: one stdlib-only file copied into the guest.

Why a separate program: the host keeps a single SSH connection; asking the
guest something (which ports listen, what runs there) must not cost a new
process per question under TCG, where starting a Go CLI takes over a second.
The host starts this file once over an SSH exec channel and talks JSON lines:

    agent -> host  {"type":"hello","protocol":1,"version":"...","sha256":"..."}   (first line, always)
    host -> agent  {"id":1,"method":"info","params":{}}
    agent -> host  {"type":"response","id":1,"result":{...}}
                   {"type":"response","id":1,"error":{"code":"...","message":"..."}}
                   {"type":"event","event":"ports","subscription":1,"added":[...],"removed":[...]}

Methods: ping, info, memory, ports, watch_ports, unwatch_ports, exec, spawn, stdin, ack, kill,
bridge_open, bridge_close.
A bad line or an unknown method gets an error response; nothing a host sends
crashes the agent. Interactive (PTY) commands use plain SSH channels.

spawn is the streaming exec the host agent uses for `devenv exec`: an SSH
session costs the guest's sshd a fork, PAM and a login shell per command
(~0.1 s under TCG), while this agent is already running. Output arrives as
events ({"event":"output","subscription":ID,"stream":"stdout","data":B64}) and
ends with {"event":"exit","subscription":ID,"exit_code":N,"signal":S|null}
after all output; stdin is sent with `stdin` requests ({"process":ID,
"data":B64,"eof":bool}), each answered once written, so a host that waits for
the answer gets ordering and back-pressure; `kill` signals the process group.

Bulk data skips JSON and base64, which cost this agent ~4 MB/s of guest CPU
under TCG: a line whose top level has "size": N is followed by N raw bytes
(the hello lists "frames" when the agent knows this). A spawn with
"frames": true sends its output that way ({"event":"output",...,"size":N} +
bytes), and a stdin request may carry its data so. A spawn with "window": W
sends at most W bytes of output the host has not acknowledged with an `ack`
({"process":ID,"bytes":n}; no answer): output a slow reader on the host has
not taken waits in the guest's pipe, not in the host agent's memory.
Stdin requests of one process are written in the order they were read, one
at a time, so a host may send the next before the last is answered.

bridge_open ({"port": P, "host": "127.0.0.1" | "::1", "peer": ADDR}) makes a
port that listens only on loopback reachable by the hypervisor's own forward
(QEMU's hostfwd reaches the guest's NIC address, never its loopback): a
listener on the NIC address that faces ADDR, on a free port it returns
({"port": B, "address": A}), accepts connections from ADDR alone (the address
the hypervisor's forwarded connections come from: QEMU's user network shows
the host as 10.0.2.2), connects each to HOST:P and copies both ways with
splice(2): no user-space copy, and ~2.5x the throughput of the same bytes
through the guest's sshd under TCG. bridge_close ({"port": B}) ends the
listener; a bridge also ends with the agent, i.e. with the host connection.

A second mode, `agent.py bridge SOCKET`, copies stdin to a unix socket in the
guest and the socket to stdout (binary, half-close kept), so one SSH exec
channel carries e.g. the Docker API without sshd's streamlocal forwarding.

One agent runs per host connection: forked for each connection to systemd's
socket by `agent.py zygote` (see zygote(); provisioning/systemd), started by
systemd per connection in guests provisioned before that (Accept=yes), or run
by the host on an SSH exec channel in a guest without the units. Either way
the connection is its lifetime, so nothing is left running when the host goes away.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

# typing costs the agent's start ~25 ms (~0.1 s under TCG) for names used only in annotations
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Json = dict[str, Any]

PROTOCOL_VERSION = 1
AGENT_VERSION = "0.2.0"

ENGINE_FILE = "/etc/devenv/engine"  # written at provisioning: the runtime this guest was set up for
ENGINE_SOCKETS = {
    "docker": "/var/run/docker.sock",
    "podman": "/run/podman/podman.sock",
    "containerd": "/run/containerd/containerd.sock",
}
ENGINE_PACKAGES = {
    "docker": ("docker.io", "docker-ce"),
    "podman": ("podman",),
    "containerd": ("containerd", "containerd.io"),
}
MAX_LINE = 16 * 1024 * 1024  # one request line; a larger one is refused, not buffered forever
MAX_OUTPUT = 16 * 1024 * 1024  # per stream of one exec; the rest is cut and flagged
DEFAULT_POLL = 1.0  # seconds between two reads of /proc/net/tcp*: cheap, and fast enough for humans
CHUNK = 64 * 1024
OUTPUT_CHUNK = 256 * 1024  # one read of a spawned command's output: fewer frames, each one costs the guest
PIPE_SIZE = 1024 * 1024  # a spawned command's pipes (F_SETPIPE_SZ; 64 KiB by default): the reads above can fill
F_SETPIPE_SZ = 1031  # Linux's fcntl number; the fcntl module names it only from Python 3.10
FEATURES = ("frames", "bridge")  # in the hello: what a newer host may use
SPLICE_CHUNK = 1024 * 1024  # one splice(2) of a loopback bridge, through a pipe grown to that size


class RequestError(Exception):
    """A failure reported to the host as an error response."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def own_sha256() -> str | None:
    """Hash of this very file, so the host can tell whether the installed copy is stale.

    CPython's built-in SHA-256 when it has one: hashlib would load OpenSSL for
    this one digest, ~40 ms of the agent's start (~0.15 s under TCG).
    """
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]  # CPython <= 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]  # 3.12+
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment,unused-ignore]
    try:
        with open(os.path.abspath(__file__), "rb") as f:
            return str(sha256(f.read()).hexdigest())
    except (OSError, NameError):
        return None


def hello() -> Json:
    return {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "version": AGENT_VERSION,
        "sha256": own_sha256(),
        "pid": os.getpid(),
        "python": ".".join(str(n) for n in sys.version_info[:3]),
        "features": list(FEATURES),
    }


# ---------------------------------------------------------------- ports


def _decode_address(hex_addr: str) -> str:
    """/proc/net/tcp prints each 32-bit word of the address in host byte order."""
    raw = b"".join(struct.pack("=I", int(hex_addr[i : i + 8], 16)) for i in range(0, len(hex_addr), 8))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw)


def listening_ports(proc: str = "/proc") -> list[Json]:
    """Every TCP socket in state LISTEN (0A), IPv4 and IPv6, sorted and without duplicates."""
    found: set[tuple[str, str, int]] = set()
    for proto, name in (("tcp", "net/tcp"), ("tcp6", "net/tcp6")):
        try:
            with open(os.path.join(proc, name), encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue  # no IPv6 in this kernel, or no /proc: report what there is
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":
                continue
            addr_hex, _, port_hex = fields[1].partition(":")
            try:
                found.add((proto, _decode_address(addr_hex), int(port_hex, 16)))
            except (ValueError, OSError, struct.error):
                continue
    return [{"proto": p, "address": a, "port": n} for p, a, n in sorted(found, key=lambda t: (t[2], t[0], t[1]))]


def _port_key(entry: Json) -> tuple[str, str, int]:
    return (str(entry["proto"]), str(entry["address"]), int(entry["port"]))


def diff_ports(old: list[Json], new: list[Json]) -> tuple[list[Json], list[Json]]:
    old_keys = {_port_key(e) for e in old}
    new_keys = {_port_key(e) for e in new}
    added = [e for e in new if _port_key(e) not in old_keys]
    removed = [e for e in old if _port_key(e) not in new_keys]
    return added, removed


# ---------------------------------------------------------------- info


def _os_release() -> str | None:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    key, _, value = line.strip().partition("=")
                    if key == "PRETTY_NAME":
                        return value.strip().strip("\"'")
        except OSError:
            continue
    return None


def _meminfo() -> Json:
    out: Json = {"total": None, "available": None}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out["total" if key == "MemTotal" else "available"] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _uptime() -> float | None:
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _dpkg_version(packages: tuple[str, ...], status_file: str = "/var/lib/dpkg/status") -> str | None:
    """Read the version from dpkg's database: starting an engine's Go binary costs seconds under TCG."""
    try:
        with open(status_file, encoding="utf-8", errors="replace") as f:
            stanzas = f.read().split("\n\n")
    except OSError:
        return None
    for stanza in stanzas:
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace():
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Package") in packages and fields.get("Status", "").endswith(" installed"):
            return fields.get("Version")
    return None


def _socket_state(path: str) -> tuple[bool, str | None]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True, None
    except OSError as e:
        return False, e.strerror or str(e)
    finally:
        s.close()


def engine_info() -> Json | None:
    name = None
    try:
        with open(ENGINE_FILE, encoding="utf-8") as f:
            name = f.read().strip() or None
    except OSError:
        name = next((n for n, path in ENGINE_SOCKETS.items() if os.path.exists(path)), None)
    if name is None:
        return None
    sock = ENGINE_SOCKETS.get(name)
    version = _dpkg_version(ENGINE_PACKAGES.get(name, (name,)))
    if version is None:
        binary = {"containerd": "containerd"}.get(name, name)
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, timeout=10, check=False)
            version = out.stdout.decode(errors="replace").strip() or None
        except (OSError, subprocess.TimeoutExpired):
            version = None
    active, error = _socket_state(sock) if sock else (False, "unknown engine")
    return {"name": name, "version": version, "socket": sock, "socket_active": active, "socket_error": error}


def info() -> Json:
    uname = os.uname()
    return {
        "hostname": uname.nodename,
        "os": _os_release(),
        "kernel": uname.release,
        "arch": uname.machine,
        "python": ".".join(str(n) for n in sys.version_info[:3]),
        "uptime": _uptime(),
        "cpus": os.cpu_count(),
        "memory": _meminfo(),
        "engine": engine_info(),
        "agent": {"version": AGENT_VERSION, "protocol": PROTOCOL_VERSION, "sha256": own_sha256()},
    }


# ---------------------------------------------------------------- exec


def _b64decode(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError("bad_params", f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise RequestError("bad_params", f"{what} is not valid base64") from None


class Workers:
    """Threads for requests, kept a while for the next one.

    Every exec is a request on its own thread; starting a thread costs a TCG
    guest ~3 ms, so a finished worker waits IDLE seconds for the next job
    before it exits. Unbounded, like one thread per request: a watch_ports
    subscription or a long exec holds its worker for as long as it runs.
    """

    IDLE = 60.0

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._idle: list[queue.SimpleQueue[tuple[Any, tuple[Any, ...]]]] = []
        self._busy = 0

    def submit(self, fn: Any, *args: Any) -> None:
        with self._lock:
            self._busy += 1
            slot = self._idle.pop() if self._idle else None
        if slot is None:
            slot = queue.SimpleQueue()
            try:
                threading.Thread(target=self._loop, args=(slot,), daemon=True).start()
            except BaseException:
                self._done()
                raise
        slot.put((fn, args))

    def _done(self, idle: queue.SimpleQueue[tuple[Any, tuple[Any, ...]]] | None = None) -> None:
        with self._lock:
            if idle is not None:
                self._idle.append(idle)
            self._busy -= 1
            self._lock.notify_all()

    def _loop(self, slot: queue.SimpleQueue[tuple[Any, tuple[Any, ...]]]) -> None:
        job: tuple[Any, tuple[Any, ...]] | None = slot.get()
        while job is not None:
            fn, args = job
            del job  # nothing of a finished request (an exec's params) stays referenced while idle
            try:
                with contextlib.suppress(Exception):  # the job answers its own errors (Agent._dispatch)
                    fn(*args)
            except BaseException:
                self._done()
                raise
            del fn, args
            self._done(idle=slot)  # idle before wait_idle() returns: the next job reuses this thread
            job = self._next(slot)

    def _next(self, slot: queue.SimpleQueue[tuple[Any, tuple[Any, ...]]]) -> tuple[Any, tuple[Any, ...]] | None:
        try:
            return slot.get(timeout=self.IDLE)
        except queue.Empty:
            with self._lock:
                if slot in self._idle:  # nobody took this worker meanwhile: it ends
                    self._idle.remove(slot)
                    return None
            return slot.get()  # submit() took it just before the timeout: the job is on its way

    def wait_idle(self) -> None:
        """Until every submitted job has finished."""
        with self._lock:
            while self._busy:
                self._lock.wait()


class Credit:
    """How much output a spawn may still send before the host acknowledges some (its window).

    Released (no limit any more) when the host goes away or the agent stops:
    a pump waiting here must still drain its command's output and end.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.unacked = 0
        self.released = False
        self._cond = threading.Condition()

    def wait(self) -> None:
        with self._cond:
            while self.unacked >= self.window and not self.released:
                self._cond.wait()

    def sent(self, n: int) -> None:
        with self._cond:
            self.unacked += n

    def ack(self, n: int) -> None:
        with self._cond:
            self.unacked = max(0, self.unacked - n)
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self.released = True
            self._cond.notify_all()


class Agent:
    """The JSON-lines server: reads requests on one thread, answers from worker threads."""

    def __init__(self, rfd: int = 0, wfd: int = 1) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._watches: dict[Any, threading.Event] = {}
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._spawned: dict[Any, subprocess.Popen[bytes]] = {}
        self._credits: dict[Any, Credit] = {}
        self._stdin_queues: dict[Any, collections.deque[tuple[Any, Json]]] = {}
        self._workers = Workers()
        self._closed = False
        self._stopping = False  # stdin ended: no new subscription may start
        self._bridges: dict[int, LoopbackBridge] = {}

    # -- output
    def send(self, msg: Json, payload: bytes = b"") -> None:
        """One line, and `payload` raw after it (the line then says its "size")."""
        if payload:
            msg["size"] = len(payload)
        data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        if payload:
            data += payload
        with self._write_lock:
            if self._closed:
                return
            try:
                view = memoryview(data)
                while view:
                    n = os.write(self.wfd, view)
                    view = view[n:]
            except OSError:
                self._closed = True  # the host went away: nobody will read a result
        if self._closed:
            self._kill_all()

    def respond(self, req_id: Any, result: Json) -> None:
        self.send({"type": "response", "id": req_id, "result": result})

    def fail(self, req_id: Any, code: str, message: str) -> None:
        self.send({"type": "response", "id": req_id, "error": {"code": code, "message": message}})

    # -- input
    def serve(self) -> int:
        self.send(hello())
        reader = os.fdopen(self.rfd, "rb", buffering=CHUNK, closefd=False)
        while True:
            line = reader.readline(MAX_LINE + 1)
            if not line:
                break
            if len(line) > MAX_LINE and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # drop the rest of the oversized line
                    line = reader.readline(MAX_LINE)
                self.fail(None, "too_large", f"request lines are limited to {MAX_LINE} bytes")
                continue
            if line.strip():
                self.handle_line(line, reader)
        self.shutdown()
        return 0

    def _payload(self, req: Json, reader: Any) -> bytes | None:
        """The raw bytes a request line announces with "size", read off the stream; None when it ended."""
        size = req.get("size")
        if size is None:
            return b""
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or reader is None:
            raise RequestError("bad_request", "`size` must be a byte count on the agent's stream")
        if size > MAX_LINE:
            while size > 0:  # skipped, so the next line is read from where it starts
                skipped = len(reader.read(min(size, CHUNK)))
                if not skipped:
                    return None
                size -= skipped
            raise RequestError("too_large", f"a request's data is limited to {MAX_LINE} bytes")
        data: bytes = reader.read(size)
        return data if len(data) == size else None

    def handle_line(self, line: bytes, reader: Any = None) -> None:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            self.fail(None, "bad_json", f"not a JSON object: {e}")
            return
        if not isinstance(req, dict):
            self.fail(None, "bad_request", "a request must be a JSON object")
            return
        try:
            payload = self._payload(req, reader)
        except RequestError as e:
            self.fail(req.get("id"), e.code, e.message)
            return
        if payload is None:
            return  # the stream ended inside the data: serve() sees the end next
        req_id = req.get("id")
        method = req.get("method")
        params = req.get("params", {})
        if params is None:
            params = {}
        if not isinstance(method, str):
            self.fail(req_id, "bad_request", "a request needs a string `method`")
            return
        if not isinstance(params, dict):
            self.fail(req_id, "bad_request", "`params` must be a JSON object")
            return
        params.pop("_payload", None)  # only ever the bytes after the line, never JSON
        if payload:
            params["_payload"] = payload
        handler = getattr(self, "m_" + method, None) if method.isidentifier() else None
        if handler is None:
            self.fail(req_id, "unknown_method", f"unknown method `{method}`")
            return
        if method in ("ping", "ack"):  # in order, so a ping also tells that every earlier line was read
            self._dispatch(handler, req_id, params)
            return
        if method == "stdin":
            self._stdin_in_order(req_id, params)
            return
        self._workers.submit(self._dispatch, handler, req_id, params)

    def _stdin_in_order(self, req_id: Any, params: Json) -> None:
        """Queue a stdin request behind the process's earlier ones; one worker writes them, in order."""
        key = params.get("process")
        with self._state_lock:
            pending = self._stdin_queues.setdefault(key, collections.deque())
            pending.append((req_id, params))
            first = len(pending) == 1
        if first:  # else the worker writing the earlier ones takes this one too
            self._workers.submit(self._write_stdin, key)

    def _write_stdin(self, key: Any) -> None:
        while True:
            with self._state_lock:
                req_id, params = self._stdin_queues[key][0]
            self._dispatch(self.m_stdin, req_id, params)
            with self._state_lock:
                pending = self._stdin_queues[key]
                pending.popleft()
                if not pending:
                    del self._stdin_queues[key]
                    return

    def _dispatch(self, handler: Any, req_id: Any, params: Json) -> None:
        try:
            result = handler(req_id, params)
        except RequestError as e:
            self.fail(req_id, e.code, e.message)
        except Exception as e:  # a bug here must not take the agent down
            self.fail(req_id, "internal", f"{type(e).__name__}: {e}")
        else:
            if result is not None:
                self.respond(req_id, result)

    def shutdown(self) -> None:
        """stdin ended: stop subscriptions, let requests already read finish and answer.

        `echo REQUEST | agent.py` therefore works; a host that vanished entirely
        makes the next write fail, which kills what still runs (see send).
        """
        with self._state_lock:
            self._stopping = True
            for stop in self._watches.values():
                stop.set()
            credits = list(self._credits.values())
            bridges, self._bridges = list(self._bridges.values()), {}
        for bridge in bridges:  # the host that asked for them is gone
            bridge.close()
        for credit in credits:  # no acks will come: output flows as it did before windows
            credit.release()
        self._workers.wait_idle()

    def _kill_all(self) -> None:
        with self._state_lock:
            procs = list(self._procs)
            credits = list(self._credits.values())
        for proc in procs:  # leave no orphan behind
            _kill_group(proc)
        for credit in credits:  # their pumps drain what the killed commands left and end
            credit.release()

    # -- methods (m_NAME(req_id, params) -> result, or None when the handler answers itself)
    def m_ping(self, req_id: Any, params: Json) -> Json:
        return {"pong": True, "time": time.time()}

    def m_info(self, req_id: Any, params: Json) -> Json:
        return info()

    def m_memory(self, req_id: Any, params: Json) -> Json:
        """What `devenv status` shows beside QEMU's RSS: one file read, unlike info."""
        return _meminfo()

    def m_ports(self, req_id: Any, params: Json) -> Json:
        return {"ports": listening_ports()}

    def m_watch_ports(self, req_id: Any, params: Json) -> None:
        interval = params.get("interval", DEFAULT_POLL)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.05 <= interval <= 3600:
            raise RequestError("bad_params", "interval must be a number of seconds from 0.05 to 3600")
        stop = threading.Event()
        with self._state_lock:
            if req_id in self._watches:
                raise RequestError("bad_params", f"subscription {req_id!r} exists already; use a new id")
            if self._stopping:  # read before stdin ended, started after: it would poll forever
                stop.set()
            self._watches[req_id] = stop
        current = listening_ports()
        self.respond(req_id, {"subscription": req_id, "ports": current})
        while not stop.wait(float(interval)):
            new = listening_ports()
            added, removed = diff_ports(current, new)
            if added or removed:
                self.send(
                    {"type": "event", "event": "ports", "subscription": req_id, "added": added, "removed": removed}
                )
            current = new
        return None

    def m_unwatch_ports(self, req_id: Any, params: Json) -> Json:
        sub = params.get("subscription")
        with self._state_lock:
            keys = list(self._watches) if sub is None else [sub] if sub in self._watches else []
            if sub is not None and not keys:
                raise RequestError("not_found", f"no port subscription {sub!r}")
            for key in keys:
                self._watches.pop(key).set()
        return {"stopped": keys}

    def m_bridge_open(self, req_id: Any, params: Json) -> Json:
        port, host, peer = params.get("port"), params.get("host", "127.0.0.1"), params.get("peer")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise RequestError("bad_params", "port must be a TCP port number")
        if host not in ("127.0.0.1", "::1"):
            raise RequestError("bad_params", "host must be 127.0.0.1 or ::1: a bridge reaches loopback ports only")
        if not isinstance(peer, str) or not peer:
            raise RequestError("bad_params", "peer must be the address forwarded connections come from")
        try:
            bridge = LoopbackBridge(host, port, peer)
        except (OSError, ValueError) as e:
            raise RequestError("bridge_failed", f"no listener facing {peer}: {e}") from e
        with self._state_lock:
            if self._stopping:
                bridge.close()
                raise RequestError("stopping", "the agent is ending")
            self._bridges[bridge.port] = bridge
        bridge.start()
        return {"port": bridge.port, "address": bridge.address}

    def m_bridge_close(self, req_id: Any, params: Json) -> Json:
        port = params.get("port")
        with self._state_lock:
            bridge = self._bridges.pop(port, None) if isinstance(port, int) else None
        if bridge is not None:
            bridge.close()
        return {"closed": bridge is not None}

    def m_spawn(self, req_id: Any, params: Json) -> None:
        argv, env, cwd = _command_params(params)
        window = params.get("window")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
            raise RequestError("bad_params", "window must be a positive number of bytes")
        # a new session: kill() signals the whole group, like ^C in a terminal
        proc = _popen(argv, env, cwd, with_stdin=bool(params.get("stdin")), bufsize=0)
        _grow_pipes(proc)
        credit = Credit(window) if window else None
        with self._state_lock:
            if req_id in self._spawned:
                _kill_group(proc)
                raise RequestError("bad_params", f"process {req_id!r} exists already; use a new id")
            self._procs.add(proc)
            self._spawned[req_id] = proc
            if credit is not None:
                self._credits[req_id] = credit
                if self._stopping or self._closed:
                    credit.release()
        self.respond(req_id, {"process": req_id, "pid": proc.pid})

        try:
            self._pump_output(req_id, proc, frames=bool(params.get("frames")), credit=credit)
            code = proc.wait()
        finally:
            with self._state_lock:
                self._procs.discard(proc)
                self._spawned.pop(req_id, None)
                self._credits.pop(req_id, None)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        self.send(
            {
                "type": "event",
                "event": "exit",
                "subscription": req_id,
                "exit_code": code if code >= 0 else 128 - code,
                "signal": -code if code < 0 else None,
            }
        )
        return None

    def _pump_output(
        self, req_id: Any, proc: subprocess.Popen[bytes], *, frames: bool = False, credit: Credit | None = None
    ) -> None:
        """stdout and stderr as output events until both end, on this one thread (no second thread per exec).

        With a credit, nothing is read while the host holds a window's worth
        unacknowledged: the command then blocks on its full pipe, as it would
        writing to a slow terminal.
        """
        names = {}
        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            if stream is not None:
                os.set_blocking(stream.fileno(), False)
                names[stream.fileno()] = name
        poller = select.poll()
        for fd in names:
            poller.register(fd, select.POLLIN)
        try:
            while names:
                if credit is not None:
                    credit.wait()
                for fd, _mask in poller.poll():
                    try:
                        data = os.read(fd, OUTPUT_CHUNK if frames else CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        poller.unregister(fd)
                        del names[fd]
                        continue
                    if credit is not None:
                        credit.sent(len(data))
                    event = {"type": "event", "event": "output", "subscription": req_id, "stream": names[fd]}
                    if frames:
                        self.send(event, data)
                    else:
                        event["data"] = base64.b64encode(data).decode()
                        self.send(event)
        finally:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def _spawned_proc(self, params: Json) -> subprocess.Popen[bytes]:
        with self._state_lock:
            proc = self._spawned.get(params.get("process"))
        if proc is None:
            raise RequestError("not_found", f"no running process {params.get('process')!r}")
        return proc

    def m_stdin(self, req_id: Any, params: Json) -> Json:
        proc = self._spawned_proc(params)
        data = params.get("_payload") or _b64decode(params.get("data", ""), "data")
        if proc.stdin is None:
            raise RequestError("bad_params", "the process was spawned without stdin")
        try:
            if data:
                proc.stdin.write(data)
            if params.get("eof"):
                proc.stdin.close()
        except (OSError, ValueError):  # it exited or closed its stdin: the rest is dropped, as a pipe would
            return {"written": 0, "closed": True}
        return {"written": len(data), "closed": False}

    def m_ack(self, req_id: Any, params: Json) -> None:
        """The host took `bytes` of a spawn's output: that much more may be sent. No answer (one per chunk)."""
        n = params.get("bytes")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise RequestError("bad_params", "bytes must be a byte count")
        with self._state_lock:
            credit = self._credits.get(params.get("process"))
        if credit is not None:  # else it has ended meanwhile
            credit.ack(n)

    def m_kill(self, req_id: Any, params: Json) -> Json:
        proc = self._spawned_proc(params)
        name = params.get("signal", "TERM")
        signum = getattr(signal, "SIG" + str(name).upper().removeprefix("SIG"), None)
        if not isinstance(signum, int):
            raise RequestError("bad_params", f"unknown signal {name!r}")
        try:
            os.killpg(proc.pid, signum)
        except OSError as e:
            return {"sent": False, "error": e.strerror}
        return {"sent": True}

    def m_exec(self, req_id: Any, params: Json) -> Json:
        argv, env, cwd = _command_params(params)
        stdin = _b64decode(params["stdin"], "stdin") if params.get("stdin") is not None else None
        timeout = params.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise RequestError("bad_params", "timeout must be a positive number of seconds")
        proc = _popen(argv, env, cwd, with_stdin=stdin is not None)  # a new session: a timeout kills the group
        with self._state_lock:
            self._procs.add(proc)
        timed_out = False
        started = time.monotonic()
        try:
            try:
                out, err = proc.communicate(stdin, timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                out, err = proc.communicate()
        finally:
            with self._state_lock:
                self._procs.discard(proc)
        code = proc.returncode
        result: Json = {
            "exit_code": code if code >= 0 else 128 - code,
            "signal": -code if code < 0 else None,
            "stdout": base64.b64encode(out[:MAX_OUTPUT]).decode(),
            "stderr": base64.b64encode(err[:MAX_OUTPUT]).decode(),
            "stdout_truncated": len(out) > MAX_OUTPUT,
            "stderr_truncated": len(err) > MAX_OUTPUT,
            "timed_out": timed_out,
            "seconds": round(time.monotonic() - started, 3),
        }
        return result


def _popen(
    argv: list[str], env: dict[str, str], cwd: str | None, *, with_stdin: bool, bufsize: int = -1
) -> subprocess.Popen[bytes]:
    """Start argv in a new session with piped output; start failures become RequestErrors."""
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            bufsize=bufsize,
            start_new_session=True,
        )
    except OSError as e:
        if cwd and e.filename == cwd:  # the working directory, not the command: the caller says "exit 1", as cd does
            raise RequestError("bad_cwd", f"{cwd}: {e.strerror}") from None
        if isinstance(e, FileNotFoundError):
            raise RequestError("not_found", f"{argv[0]}: {e.strerror}") from None
        if isinstance(e, PermissionError):
            raise RequestError("permission_denied", f"{argv[0]}: {e.strerror}") from None
        raise RequestError("exec_failed", f"{argv[0]}: {e.strerror or e}") from None


def _grow_pipes(proc: subprocess.Popen[bytes]) -> None:
    """Pipes of PIPE_SIZE for a spawned command: reads of OUTPUT_CHUNK, and fewer switches between it and the pump."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - the guest is Linux
        return
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):  # over the system's pipe-max-size: the default stays
                fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, PIPE_SIZE)


def _command_params(params: Json) -> tuple[list[str], dict[str, str], str | None]:
    """argv, env (the agent's own, updated) and cwd of a spawn request, validated."""
    argv = params.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise RequestError("bad_params", "argv must be a non-empty list of strings")
    env_param = params.get("env") or {}
    if not isinstance(env_param, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_param.items()
    ):
        raise RequestError("bad_params", "env must be an object of strings")
    env = {} if params.get("replace_env") else dict(os.environ)
    env.update(env_param)
    cwd = params.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise RequestError("bad_params", "cwd must be a string")
    return argv, env, cwd


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        with contextlib.suppress(OSError):
            proc.kill()


# ---------------------------------------------------------------- bridge


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class LoopbackBridge:
    """A listener on the guest's address that faces `peer`, each connection from `peer` joined to host:port.

    Only `peer` is let in: it is where the hypervisor's forwarded connections
    come from (the host as the guest sees it). A container or another account
    in the guest connects from elsewhere and is closed at once, so the bridge
    opens a loopback-only service to nobody the SSH path would not.
    """

    def __init__(self, host: str, port: int, peer: str) -> None:
        self.host, self.target, self.peer = host, port, peer
        family = socket.AF_INET6 if ":" in peer else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:  # sends nothing: the route's source address
            probe.connect((peer, 9))
            self.address = str(probe.getsockname()[0])
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.bind((self.address, 0))
            self.listener.listen(64)
        except OSError:
            self.listener.close()
            raise
        self.port = int(self.listener.getsockname()[1])
        self._closed = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._accept, name=f"bridge-{self.port}", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below; close() alone would not
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, addr = self.listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.1)  # out of descriptors for a moment: the next accept may succeed
                continue
            if addr[0] != self.peer:
                conn.close()
                continue
            threading.Thread(target=self._join, args=(conn,), daemon=True).start()

    def _join(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection((self.host, self.target), timeout=10)
        except OSError:  # nothing listens (yet): the client sees its connection closed, as over SSH
            conn.close()
            return
        upstream.settimeout(None)
        for s in (conn, upstream):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_pump_socket, args=(upstream, conn), daemon=True)
        back.start()
        _pump_socket(conn, upstream)
        back.join()
        conn.close()
        upstream.close()


def _pump_socket(src: socket.socket, dst: socket.socket) -> None:
    """src to dst until src ends (then dst's write side is shut, a half-close kept) or either fails (both shut)."""
    try:
        if sys.platform == "linux" and hasattr(os, "splice"):  # Python 3.10+
            _splice_all(src.fileno(), dst.fileno())
        else:  # pragma: no cover - Python < 3.10
            while data := src.recv(CHUNK):
                dst.sendall(data)
    except OSError:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        return
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _splice_all(src: int, dst: int) -> None:
    if sys.platform != "linux":  # pragma: no cover - its callers ask for Linux
        raise OSError("splice(2) is Linux's")
    else:
        r, w = os.pipe()
        try:
            with contextlib.suppress(ImportError, OSError):
                import fcntl

                fcntl.fcntl(w, F_SETPIPE_SZ, SPLICE_CHUNK)
            while n := os.splice(src, w, SPLICE_CHUNK):  # blocks until there are bytes, 0 at the end
                while n:
                    n -= os.splice(r, dst, n)
        finally:
            os.close(r)
            os.close(w)


def bridge(path: str, rfd: int = 0, wfd: int = 1) -> int:
    """Copy rfd -> unix socket and socket -> wfd until both directions end.

    Half-close is kept in both directions: EOF on stdin becomes shutdown(SHUT_WR)
    on the socket (the server still answers), and EOF from the socket closes
    stdout (the host sees EOF) while stdin may still be copied.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sys.stderr.write(f"devenv guestagent bridge: cannot connect to {path}: {e.strerror or e}\n")
        return 3

    def upstream() -> None:
        try:
            while True:
                data = os.read(rfd, CHUNK)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    up = threading.Thread(target=upstream, daemon=True)
    up.start()
    try:
        while True:
            data = sock.recv(CHUNK)
            if not data:
                break
            _write_all(wfd, data)
    except OSError:
        pass
    finally:
        # Replace (not just close) the write end: EOF reaches the host now, and a
        # stray write later goes nowhere instead of into an unrelated file.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, wfd)
        os.close(devnull)
    up.join()
    sock.close()
    return 0


# ---------------------------------------------------------------- main

# What systemd read when it started the zygote, or what the zygote itself loaded: when one of
# them changes, the agents it forks would serve stale code, environment or groups.
ZYGOTE_WATCHES = ("/etc/environment", "/etc/group")
SD_LISTEN_FDS_START = 3


def _stamp(paths: tuple[str, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def zygote(watches: tuple[str, ...] = ZYGOTE_WATCHES) -> int:
    """Serve each connection to systemd's socket (Accept=no) in a child forked from this process.

    Why: an agent started per connection (Accept=yes) paid the interpreter's start and this
    file's imports first, ~0.5 s in an idle TCG guest and 2-4 s while the guest still boots,
    in every `devenv start` before it was ready. This process did that once, at boot; a fork
    costs milliseconds. Each child is what a per-connection agent was: one host connection,
    its own session, gone with the connection; what it spawned outlives it (KillMode=process).
    Children are reaped by the kernel (SIGCHLD ignored here, restored in each child).

    The zygote stops, leaving the waiting connection on the socket, when what its children
    would inherit is stale: this file replaced (the host installs a new agent), or
    /etc/environment or /etc/group changed since it started (first-boot provisioning, an
    engine's group). systemd then starts a fresh zygote for that connection.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS") or 0) < 1:
        sys.stderr.write("devenv guestagent zygote: no socket from systemd (LISTEN_PID, LISTEN_FDS)\n")
        return 2
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):  # systemd's, not the commands' it runs
        os.environ.pop(var, None)
    listener = socket.socket(fileno=SD_LISTEN_FDS_START)
    listener.setblocking(False)
    paths = (os.path.abspath(__file__), *watches)
    started = _stamp(paths)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        select.select([listener], [], [])
        if _stamp(paths) != started:
            return 0
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            continue
        except OSError as e:  # out of fds or memory: the connection waits, the next try may do
            sys.stderr.write(f"devenv guestagent zygote: accept: {e}\n")
            time.sleep(0.5)
            continue
        try:
            pid = os.fork()
        except OSError as e:
            sys.stderr.write(f"devenv guestagent zygote: fork: {e}\n")
            conn.close()
            continue
        if pid == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            fd = conn.detach()
            os.set_blocking(fd, True)
            os.dup2(fd, 0)
            os.dup2(fd, 1)
            os.close(fd)
            return Agent().serve()
        conn.close()


USAGE = "usage: guestagent.py [serve] | zygote | bridge SOCKET_PATH | --version\n"


def main(argv: list[str]) -> int:
    if not argv or argv == ["serve"]:
        return Agent().serve()
    if argv == ["zygote"]:
        return zygote()
    if argv[0] == "bridge" and len(argv) == 2:
        return bridge(argv[1])
    if argv == ["--version"]:
        sys.stdout.write(json.dumps(hello()) + "\n")
        return 0
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
