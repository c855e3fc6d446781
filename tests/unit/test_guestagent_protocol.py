"""Host side of the agent protocol and the agent's pure functions (no subprocess)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shlex
import socket
import struct
import threading
from pathlib import Path

import pytest

from devenv.guestagent import agent, protocol
from devenv.provision.assets import provisioning_dir


def test_protocol_constants_come_from_the_agent() -> None:
    assert protocol.PROTOCOL_VERSION == agent.PROTOCOL_VERSION == 1
    assert protocol.agent_source() == Path(agent.__file__).read_bytes()
    assert protocol.agent_sha256() == hashlib.sha256(Path(agent.__file__).read_bytes()).hexdigest()


def test_encode_decode_round_trip() -> None:
    line = protocol.encode({"id": 1, "method": "ping", "params": {}})
    assert line == b'{"id":1,"method":"ping","params":{}}\n'
    assert protocol.decode(line) == {"id": 1, "method": "ping", "params": {}}


@pytest.mark.parametrize("line", [b"nope\n", b"[1]\n", b"\xff\n"])
def test_decode_rejects_non_objects(line: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(line)


def test_check_hello_wants_same_protocol_and_same_file() -> None:
    good = protocol.Hello(protocol=1, version=agent.AGENT_VERSION, sha256=protocol.agent_sha256())
    assert protocol.check_hello(good) is None
    assert protocol.check_hello(protocol.Hello(2, "9.9", protocol.agent_sha256())) == (
        "guest agent speaks protocol 2, this devenv speaks 1"
    )
    stale = protocol.check_hello(protocol.Hello(1, "0.0.1", "0" * 64))
    assert stale is not None and "differs" in stale


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", "guest agent ended before saying hello"),
        (b'{"type":"response"}\n', "guest agent's first line is not a hello"),
    ],
)
def test_parse_hello_errors(line: bytes, message: str) -> None:
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.parse_hello(line)
    assert str(err.value).startswith(message)


def test_client_refuses_another_protocol_version() -> None:
    hello = protocol.encode({"type": "hello", "protocol": 2, "version": "9", "sha256": None})
    client = protocol.AgentClient(io.BytesIO(hello), io.BytesIO())
    with pytest.raises(protocol.ProtocolError) as err:
        client.start()
    assert str(err.value) == "guest agent speaks protocol 2, this devenv speaks 1"


class _HostileGuest:
    """What root in the guest could send after a proper hello, and how much the host asked to read of it.

    Nothing after the hello comes before the host's request has gone out, so the request is pending
    when the reader meets the bad bytes (no race with the call).
    """

    def __init__(self, after_hello: bytes, endless: bool = False) -> None:
        self._hello = protocol.encode({"type": "hello", "protocol": protocol.PROTOCOL_VERSION, "version": "t"})
        self._rest = after_hello
        self._endless = endless
        self.sent = threading.Event()
        self.asked: list[int] = []

    def readline(self, size: int = -1, /) -> bytes:
        self.asked.append(size)
        if self._hello:
            line, self._hello = self._hello, b""
            return line
        self.sent.wait(10)
        if self._endless:  # a line that never ends: as much as was asked for, never a newline
            assert size > 0, "an unbounded readline of the guest's stream"
            return b"x" * size
        line, _, self._rest = self._rest.partition(b"\n")
        return line + b"\n" if line else b""

    def read(self, size: int = -1, /) -> bytes:
        self.asked.append(size)
        return b"y" * min(size, 1 << 20)

    def write(self, data: bytes, /) -> int:
        return len(data)

    def flush(self) -> None:
        self.sent.set()


@pytest.mark.parametrize(
    ("guest", "why"),
    [
        (_HostileGuest(b"", endless=True), "a line without end"),
        (_HostileGuest(protocol.encode({"id": 1, "result": {}, "size": 1 << 40})), "a payload of a TiB announced"),
    ],
    ids=["endless-line", "huge-payload"],
)
def test_the_host_closes_on_what_no_agent_sends_and_reads_a_bounded_amount(guest: _HostileGuest, why: str) -> None:
    client = protocol.AgentClient(guest, guest)
    client.start()
    with pytest.raises(protocol.ConnectionFailed, match="closed during `ping`"):
        client.call("ping", timeout=10)
    assert all(0 < n <= protocol.MAX_REPLY_LINE + 1 for n in guest.asked), (why, guest.asked)
    assert protocol.MAX_REPLY_LINE < 64 << 20 and protocol.MAX_REPLY_DATA <= 16 << 20


def test_the_largest_honest_reply_fits_the_hosts_bound() -> None:
    """An exec result with both streams at the agent's own cap is one line the host still reads."""
    full = base64.b64encode(b"\xff" * agent.MAX_OUTPUT).decode()
    line = protocol.encode({"id": 1, "result": {"code": 0, "stdout": full, "stderr": full, "stdout_truncated": True}})
    assert len(line) <= protocol.MAX_REPLY_LINE


def test_commands_are_shell_safe() -> None:
    assert protocol.serve_command() == (
        "python3 -I -S -c \"import sys; sys.path.insert(0, '/usr/local/lib/devenv'); "
        'import guestagent; sys.exit(guestagent.main(sys.argv[1:]))"'
    )
    assert shlex.split(protocol.serve_command())[:3] == ["python3", "-I", "-S"]
    assert protocol.bridge_command("/run/my dir/x.sock") == (
        "python3 /usr/local/lib/devenv/guestagent.py bridge '/run/my dir/x.sock'"
    )
    install = protocol.install_command()
    assert install.startswith("sudo -n sh -c '") and install.endswith(f"python3 -m py_compile {protocol.GUEST_PATH}'")


def test_the_agents_unit_launches_it_as_the_host_does() -> None:
    """The socket unit's agents and an exec channel's agent start the same way (imported, -I -S)."""
    unit = (provisioning_dir() / "systemd" / "devenv-guestagent.service").read_text()
    exec_start = [line.removeprefix("ExecStart=") for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == ["/usr/bin/" + protocol.GUEST_LAUNCH + " zygote"]
    socket_unit = (provisioning_dir() / "systemd" / "devenv-guestagent.socket").read_text()
    assert "Accept=no" in socket_unit.splitlines()  # the service takes the connections, forking an agent each


def _hex_word(raw: bytes) -> str:
    return "".join(f"{struct.unpack('=I', raw[i : i + 4])[0]:08X}" for i in range(0, len(raw), 4))


def test_listening_ports_parses_proc_net_tcp(tmp_path: Path) -> None:
    net = tmp_path / "net"
    net.mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    v4 = _hex_word(socket.inet_aton("127.0.0.1"))
    any4 = _hex_word(socket.inet_aton("0.0.0.0"))
    (net / "tcp").write_text(
        header
        + f"   0: {v4}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1 1\n"
        + f"   1: {any4}:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 0 2 1\n"
        + f"   2: {v4}:9C40 {v4}:1F90 01 00000000:00000000 00:00000000 00000000  1000 0 3 1\n"  # established
        + f"   3: {v4}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 4 1\n"  # duplicate
    )
    v6 = _hex_word(socket.inet_pton(socket.AF_INET6, "::1"))
    (net / "tcp6").write_text(
        header + f"   0: {v6}:1F90 {'0' * 32}:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 5 1\n"
    )
    assert agent.listening_ports(str(tmp_path)) == [
        {"proto": "tcp", "address": "0.0.0.0", "port": 22},
        {"proto": "tcp", "address": "127.0.0.1", "port": 8080},
        {"proto": "tcp6", "address": "::1", "port": 8080},
    ]


def test_listening_ports_without_proc_is_empty(tmp_path: Path) -> None:
    assert agent.listening_ports(str(tmp_path)) == []


def test_diff_ports() -> None:
    a = {"proto": "tcp", "address": "127.0.0.1", "port": 1}
    b = {"proto": "tcp", "address": "127.0.0.1", "port": 2}
    c = {"proto": "tcp6", "address": "::", "port": 2}
    assert agent.diff_ports([a, b], [b, c]) == ([c], [a])
    assert agent.diff_ports([a], [a]) == ([], [])


def test_dpkg_version(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(
        "Package: podman\nStatus: deinstall ok config-files\nVersion: 1.0\n\n"
        "Package: docker.io\nStatus: install ok installed\nVersion: 20.10.24+dfsg1-1+b3\nDescription: x\n y\n"
    )
    assert agent._dpkg_version(("docker.io", "docker-ce"), str(status)) == "20.10.24+dfsg1-1+b3"
    assert agent._dpkg_version(("podman",), str(status)) is None


def test_hello_message() -> None:
    msg = agent.hello()
    assert json.loads(json.dumps(msg))["type"] == "hello"
    assert msg["protocol"] == 1 and msg["sha256"] == protocol.agent_sha256()
