"""`devenv exec` served by the host agent: the caller's request pumped to a guest-agent spawn.

The control channel (daemon.py) hands each exec request here, with the
caller's stdin, stdout and stderr as file descriptors (unix socket), or
without them as lines on the connection (the TCP channel, Windows).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import os
import queue
import select
import socket
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from devenv.errors import DevenvError
from devenv.fdio import write_all
from devenv.guestagent import protocol
from devenv.hostagent import wire

if TYPE_CHECKING:
    from devenv.hostagent.daemon import HostAgent

log = logging.getLogger(__name__)

EXEC_WAIT = 30.0  # how long `devenv exec` waits for a reconnect before giving up
MOUNTS_WAIT = 45.0  # and then for mounts under way (a reconnect mounts again: one sshfs mount may take 40 s)
STDIN_POLL = 0.5  # s between looks at whether the command ended, while stdin is quiet
STDIN_CHUNK = 256 * 1024  # one stdin request
# Stdin requests in flight to an agent that writes them in order ("frames"): waiting for each answer
# before sending the next left every stage between here and the command's pipe idle in turn.
STDIN_AHEAD = 4
# Output of one command the guest may send before this agent has written it out: a reader slower
# than the guest (a pipe into `less`, a full disk) holds the rest in the guest, not in this process.
OUTPUT_WINDOW = 1024 * 1024
ACK_EVERY = OUTPUT_WINDOW // 4  # one ack per this much written; below a window, so the guest never waits on one


class ExecRequest:
    """`devenv exec` over the control channel, pumped to a guest-agent spawn.

    With the caller's three fds (unix socket + SCM_RIGHTS) output goes straight
    to them; without (fds=None: stream mode, the TCP channel) output goes back
    as {"out", "data"} lines and stdin comes as {"op": "stdin"} lines.
    """

    def __init__(
        self,
        agent: HostAgent,
        client: socket.socket,
        reader: wire.LineReader,
        msg: Mapping[str, Any],
        fds: list[int] | None,
    ) -> None:
        self.agent = agent
        self.client = client
        self.reader = reader
        self.msg = msg
        self.fds = fds or []
        self.streamed = fds is None  # no fds to write to: output and stdin travel as lines on `client`
        self.stdin_fd, self.stdout_fd, self.stderr_fd = fds or (-1, -1, -1)
        self.done = threading.Event()
        self._stdin_owned = False
        self._stdin_lines: queue.Queue[dict[str, Any] | None] | None = None
        self._stdin_lock = threading.Lock()  # _stdin_lines is closed and filled from two threads
        self.send_lock = threading.Lock()

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            self.done.set()
            # The stdin thread closes its fd itself: closing it here while it may still
            # select() on it could make it read whatever file gets that number next.
            for fd in self.fds[1:] if self._stdin_owned else self.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def send(self, msg: dict[str, Any]) -> None:
        """One line to the caller (stream mode: output and stdin acks come from two threads)."""
        with self.send_lock:
            self.client.sendall(wire.encode(msg))

    def _ack_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self.send({"stdin_ack": 1})

    def _emit(self, stream: str, data: bytes) -> None:
        """Output of the command (or devenv's word about it) to the caller; OSError when the caller is gone."""
        if self.streamed:
            self.send({"out": stream, "data": base64.b64encode(data).decode()})
        else:
            write_all(self.stdout_fd if stream == "stdout" else self.stderr_fd, data)

    def _run(self) -> dict[str, Any]:
        argv = self.msg.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            return {"error": "exec needs a command", "code": 2}
        session = self.agent.wait_session(EXEC_WAIT)
        if session is None or session.client is None or not session.can_spawn:
            return {"unavailable": True, "error": "the host agent is not connected to the guest"}
        if pending := self.agent.wait_mounts(MOUNTS_WAIT):  # run anyway, but not silently on an empty folder
            with contextlib.suppress(OSError):
                self._emit("stderr", f"devenv: warning: {', '.join(pending)} not mounted yet\n".encode())
        env_in = self.msg.get("env") or {}
        env = {**self.agent.opts.env, **{str(k): str(v) for k, v in dict(env_in).items()}}
        workdir = self.msg.get("workdir")
        if isinstance(workdir, str) and workdir:
            cwd: str | None = workdir  # `-w`: a guest directory, as it is
        else:
            cwd = self.agent.guest_cwd(self.msg.get("cwd") if isinstance(self.msg.get("cwd"), str) else None)
        want_stdin = bool(self.msg.get("stdin"))
        client = session.client
        spawn: dict[str, Any] = {"argv": argv, "env": env, "cwd": cwd, "stdin": want_stdin}
        frames = client.hello is not None and "frames" in client.hello.features
        if frames:  # raw bytes, no base64, and output bounded by a window (agent.py)
            spawn.update(frames=True, window=OUTPUT_WINDOW)
        try:
            result = client.call("spawn", spawn, timeout=60)
        except protocol.AgentError as e:
            if e.code == "unknown_method":
                session.can_spawn = False
                return {"unavailable": True, "error": "the guest agent cannot spawn"}
            self._emit("stderr", f"devenv: {e.reason}\n".encode())
            # as a shell reports them: 127 no such command, 126 not executable, 1 anything else (a -w cd failing)
            return {"exit_code": {"not_found": 127, "permission_denied": 126}.get(e.code, 1)}
        except protocol.NotSent as e:
            return {"unavailable": True, "error": str(e)}  # the guest never saw it: the caller may run it over SSH
        except DevenvError as e:  # sent, no answer: it may be running, so it must not be run a second time
            with contextlib.suppress(OSError):
                self._emit("stderr", f"devenv: {e}; the command may have started in the guest\n".encode())
            return {"exit_code": 255}
        proc_id = result["process"]
        self.agent.count_exec()
        events = session.attach(proc_id)
        try:
            if self.streamed:
                self.send({"started": True})  # the client starts sending stdin only now
            if want_stdin:
                if self.streamed:  # stdin lines arrive with the signals: a queue and a writer of their own
                    self._stdin_lines = queue.Queue()  # the client keeps at most wire.STDIN_WINDOW lines unacked
                    pump: Callable[..., None] = self._stdin_from_lines
                else:
                    self._stdin_owned = True
                    pump = self._stdin
                threading.Thread(target=pump, args=(client, proc_id, frames), name="exec-stdin", daemon=True).start()
            threading.Thread(target=self._signals, args=(client, proc_id), name="exec-signals", daemon=True).start()
            return self._output(events, client if frames else None, proc_id)
        finally:
            session.detach(proc_id)

    def _output(
        self, events: queue.Queue[tuple[str, Any]], acks: protocol.AgentClient | None, proc_id: Any
    ) -> dict[str, Any]:
        """The command's output to the caller until it exits; with `acks`, each chunk acknowledged once written."""
        broken = False
        unacked = 0
        while True:
            kind, ev = events.get()
            if kind == "lost":
                with contextlib.suppress(OSError):
                    self._emit("stderr", b"devenv: lost the connection to the guest while the command ran\n")
                return {"exit_code": 255}
            if ev.get("event") == "exit":
                return {"exit_code": int(ev.get("exit_code", 255))}
            data = ev["payload"] if "payload" in ev else base64.b64decode(ev.get("data", ""))
            if not broken:
                try:
                    self._emit("stdout" if ev.get("stream") == "stdout" else "stderr", data)
                except OSError:  # the reader went away (head, a closed pipe): drop the rest, as SIGPIPE would
                    broken = True
            unacked += len(data)  # dropped counts as taken: the guest must drain the command either way
            if acks is not None and unacked >= ACK_EVERY:
                with contextlib.suppress(DevenvError, OSError):  # a lost session ends this loop with its own event
                    acks.notify("ack", {"process": proc_id, "bytes": unacked})
                unacked = 0

    def _stdin(self, client: protocol.AgentClient, proc_id: Any, frames: bool) -> None:
        inflight: collections.deque[protocol.Reply] = collections.deque()
        try:
            while not self.done.is_set():
                ready, _, _ = select.select([self.stdin_fd], [], [], STDIN_POLL)
                if not ready:
                    continue
                data = os.read(self.stdin_fd, STDIN_CHUNK)
                if frames:
                    inflight.append(client.begin("stdin", {"process": proc_id, "eof": not data}, payload=data))
                    if not data:
                        return
                    while len(inflight) >= STDIN_AHEAD:
                        if _closed(inflight.popleft().wait(None)):
                            return
                    continue
                params = {"process": proc_id, "data": base64.b64encode(data).decode(), "eof": not data}
                if not data or _closed(client.call("stdin", params, timeout=None)):
                    return
        except (OSError, ValueError, DevenvError) as e:
            log.debug("exec stdin ended: %s", e)
        finally:
            for reply in inflight:  # their answers say nothing now that stdin is done
                reply.forget()
            with contextlib.suppress(OSError):
                os.close(self.stdin_fd)

    def _stdin_from_lines(self, client: protocol.AgentClient, proc_id: Any, frames: bool) -> None:
        """Stream mode: stdin lines to the guest in order, apart from the reader, so a full pipe never holds up ^C."""
        lines = self._stdin_lines
        assert lines is not None
        try:
            while (msg := lines.get()) is not None:
                params = {"process": proc_id, "eof": bool(msg.get("eof"))}
                if frames:
                    r = client.call("stdin", params, timeout=None, payload=base64.b64decode(str(msg.get("data", ""))))
                else:
                    r = client.call("stdin", {**params, "data": str(msg.get("data", ""))}, timeout=None)
                self._ack_stdin()
                if params["eof"] or (isinstance(r, dict) and r.get("closed")):
                    return  # the command closed its stdin: the rest is dropped, as a pipe would
        except (OSError, ValueError, DevenvError) as e:
            log.debug("exec stdin ended: %s", e)
        finally:
            self._close_stdin_lines(lines)

    def _close_stdin_lines(self, lines: queue.Queue[dict[str, Any] | None]) -> None:
        """No more stdin lines are queued; ack what was queued but will never be written, so the window never stalls."""
        with self._stdin_lock:  # after this no line reaches the queue (see _queue_stdin)
            self._stdin_lines = None
        while True:
            try:
                if lines.get_nowait() is not None:
                    self._ack_stdin()
            except queue.Empty:
                return

    def _queue_stdin(self, msg: dict[str, Any] | None) -> None:
        """A stdin line (None: the caller is gone) for the writer; dropped and acked once stdin is closed."""
        with self._stdin_lock:
            lines = self._stdin_lines
            if lines is not None:
                lines.put(msg)
                return
        if msg is not None:
            self._ack_stdin()  # as a pipe would drop it

    def _signals(self, client: protocol.AgentClient, proc_id: Any) -> None:
        """Signal requests from the caller; the caller vanishing (EOF) hangs the command up."""
        try:
            while not self.done.is_set():
                line = self.reader.readline()
                if not line:
                    if not self.done.is_set():
                        client.call("kill", {"process": proc_id, "signal": "HUP"}, timeout=10)
                    return
                msg = wire.decode(line)
                if self.done.is_set():
                    continue
                if msg.get("op") == "signal":
                    client.call("kill", {"process": proc_id, "signal": str(msg.get("signal", "INT"))}, timeout=10)
                elif msg.get("op") == "stdin":
                    self._queue_stdin(msg)
        except (OSError, ValueError, DevenvError) as e:
            log.debug("exec signal reader ended: %s", e)
        finally:
            self._queue_stdin(None)


def _closed(reply: Any) -> bool:
    """A stdin answer saying the command closed its stdin: the rest is dropped, as a pipe would."""
    return isinstance(reply, dict) and bool(reply.get("closed"))
