"""The guest end of the SSH relay: the host agent's SSH session over a virtio-serial port, not the network.

Runs in the guest (stdlib only, as root: the port device is root's), started
by devenv-relay.service. Why: a session through QEMU's user-mode network dies
with the QEMU process, so every resume paid a new SSH login and guest agent
(~1.9 s of a 2.4 s resume under TCG). A virtio-serial port is device state that
a save keeps: the host agent quiesces its end, QEMU is saved and exits, and
after the restore the same agent connects to the new QEMU's socket and the SSH
session goes on where it stopped.

The wire (devenv/hostagent/relay.py is the host end):
- host to guest: frames, MAGIC + kind (1 byte) + length (4 bytes, big endian)
  + payload of at most MAX_FRAME bytes. Kind DATA carries SSH bytes for sshd;
  kind NEW (payload: a nonce) ends the current sshd connection and opens a new
  one to 127.0.0.1:22; kind CLOCK (payload: the host's time, seconds since
  the epoch in ASCII) sets the guest's clock, before any later frame is
  passed on: a restored guest's clock is behind by the time it spent saved,
  and setting it here costs no process in the guest (sudo date took ~0.4 s
  under TCG).
- guest to host: raw sshd bytes, except that after a NEW the relay writes
  READY_PREFIX + nonce + b" " + FEATURES + b"\\n" before the new connection's
  first byte (or b" FAILED" when sshd did not answer). FEATURES tells a newer
  host which frame kinds this relay knows (one installed by an older devenv
  knows fewer; a frame it does not know is skipped). A new
  host connection discards everything before the marker with its nonce, so
  bytes of an abandoned connection never reach a new session.
- a host that starts a new session sends PAD_BYTES zero bytes before NEW: a
  relay left in the middle of a frame by an agent that was killed reads the
  rest of that frame from the zeros, finds no MAGIC in what follows, and
  skips ahead to the NEW frame's MAGIC.

While no host is connected to the port, reads return b"" (sleep and read again)
and writes wait until one is: nothing the guest sends is lost.

The port is read non-blocking with readv() into page-sized buffers: the
guest's virtio-console driver hands out at most one 4 KiB buffer per read(),
so a plain read loop cost a system call, a Python iteration and a small send
to sshd per 4 KiB, which under TCG made host-to-guest bytes (stdin of an exec,
an upload through a forward) cost the guest ~5 times what the other way did.
One readv() takes all that is waiting; the DATA frames it held go to sshd in
one send.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import sys
import threading
import time

PORT_NAME = "org.devenv.relay"
PORT = f"/dev/virtio-ports/{PORT_NAME}"
MAGIC = b"DVR1"
DATA, NEW, CLOCK = b"D", b"N", b"T"
FEATURES = b"+clock"
HEADER = struct.Struct(">4scI")
MAX_FRAME = 32768
PAD_BYTES = MAX_FRAME + HEADER.size
READY_PREFIX = b"\nDVR1 READY "
SSHD = ("127.0.0.1", 22)
SSHD_WAIT = 60.0  # a NEW during boot may come before sshd listens
PORT_WAIT = 30.0  # the port appears once udev has named it; no port at all: not a devenv VM
IDLE = 0.05  # s between reads while no host is connected
PAGE = 4096  # the driver's buffer size (PAGE_SIZE): each one fills an iovec of this size, so readv goes on
READ_PAGES = 64  # per readv(): up to 256 KiB of what is waiting on the port


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, kind, len(payload)) + payload


class FrameReader:
    """Frames from a byte stream, skipping to the next MAGIC after anything that is not a frame header."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buf += data
        out: list[tuple[bytes, bytes]] = []
        while True:
            at = self.buf.find(MAGIC)
            if at < 0:  # keep a tail that may be the start of MAGIC
                del self.buf[: max(0, len(self.buf) - (len(MAGIC) - 1))]
                return out
            del self.buf[:at]
            if len(self.buf) < HEADER.size:
                return out
            _, kind, length = HEADER.unpack_from(self.buf)
            if kind not in (DATA, NEW, CLOCK) or length > MAX_FRAME:
                del self.buf[:1]  # not a header after all: look for the next MAGIC
                continue
            if len(self.buf) < HEADER.size + length:
                return out
            out.append((kind, bytes(self.buf[HEADER.size : HEADER.size + length])))
            del self.buf[: HEADER.size + length]


class Relay:
    def __init__(self, port_fd: int) -> None:
        self.port = port_fd
        self.write_lock = threading.Lock()
        self.sshd: socket.socket | None = None
        self.pump: threading.Thread | None = None

    def write_port(self, data: bytes) -> None:
        with self.write_lock:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self.port, view)
                except BlockingIOError:  # the host has not taken what was written, or none is connected
                    self.wait_port(select.POLLOUT)
                    continue
                view = view[n:]

    def wait_port(self, event: int) -> None:
        """Until the port may be read or written (`event`); a port with no host says so at once: sleep then."""
        poller = select.poll()
        poller.register(self.port, event)
        ready = poller.poll(1000)
        if not any(mask & event for _, mask in ready):
            time.sleep(IDLE)

    def read_port(self, pages: list[memoryview], buf: memoryview) -> bytes:
        """All the port holds now, at least one byte; b"" while no host is connected."""
        while True:
            try:
                n = os.readv(self.port, pages)
            except BlockingIOError:
                self.wait_port(select.POLLIN)
                continue
            return bytes(buf[:n])

    def run(self) -> None:
        os.set_blocking(self.port, False)
        reader = FrameReader()
        buf = memoryview(bytearray(PAGE * READ_PAGES))
        pages = [buf[i : i + PAGE] for i in range(0, len(buf), PAGE)]
        while True:
            data = self.read_port(pages, buf)
            if not data:  # no host connected: wait for one
                time.sleep(IDLE)
                continue
            out: list[bytes] = []  # DATA for sshd, sent at once: one send for what one readv took
            for kind, payload in reader.feed(data):
                if kind == DATA:
                    out.append(payload)
                    continue
                self.to_sshd(out)
                out = []
                if kind == NEW:
                    self.new_session(payload)
                elif kind == CLOCK:
                    set_clock(payload)
            self.to_sshd(out)

    def to_sshd(self, payloads: list[bytes]) -> None:
        if not payloads or self.sshd is None:
            return
        try:
            self.sshd.sendall(payloads[0] if len(payloads) == 1 else b"".join(payloads))
        except OSError:
            self.end_session()

    def end_session(self) -> None:
        s, self.sshd = self.sshd, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        if self.pump is not None:
            self.pump.join(5)
            self.pump = None

    def new_session(self, nonce: bytes) -> None:
        self.end_session()
        deadline = time.monotonic() + SSHD_WAIT
        while True:
            try:
                s = socket.create_connection(SSHD, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.write_port(READY_PREFIX + nonce + b" FAILED\n")
                    return
                time.sleep(0.2)
        s.settimeout(None)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sshd = s
        self.write_port(READY_PREFIX + nonce + b" " + FEATURES + b"\n")
        self.pump = threading.Thread(target=self.sshd_to_host, args=(s,), daemon=True)
        self.pump.start()

    def sshd_to_host(self, s: socket.socket) -> None:
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                return
            if not data:
                return  # the host learns of it when its pings go unanswered
            self.write_port(data)


def set_clock(payload: bytes) -> None:
    try:
        time.clock_settime(time.CLOCK_REALTIME, float(payload))
    except (ValueError, OSError) as e:
        print(f"devenv-relay: cannot set the clock to {payload[:32]!r}: {e}", file=sys.stderr)


def main(argv: list[str]) -> int:
    deadline = time.monotonic() + PORT_WAIT
    while not os.path.exists(PORT):
        if time.monotonic() > deadline:
            print(f"devenv-relay: no {PORT}: this VM has no relay port", file=sys.stderr)
            return 0
        time.sleep(0.2)
    fd = os.open(PORT, os.O_RDWR)
    Relay(fd).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
