"""The SSH port an instance keeps across restarts, on real sockets of this host."""

from __future__ import annotations

import socket
from pathlib import Path

from devenv import paths
from devenv.backends.drivers.qemuproc import port_free, ssh_port_for


def test_the_last_port_is_kept_while_it_is_free(tmp_path: Path) -> None:
    first = ssh_port_for(tmp_path)  # nothing recorded: a new one
    (tmp_path / paths.SSH_PORT).write_text(f"{first}\n")
    assert ssh_port_for(tmp_path) == first
    assert ssh_port_for(tmp_path) == first  # asking does not take it


def test_a_port_taken_meanwhile_gives_way_to_a_new_one(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / paths.SSH_PORT).write_text(f"{port}\n")
        assert not port_free(port)
        new = ssh_port_for(tmp_path)
        assert new != port and port_free(new)


def test_a_port_left_in_time_wait_is_still_free_for_qemu(tmp_path: Path) -> None:
    """QEMU's user-mode net binds with SO_REUSEADDR: a closed connection's TIME_WAIT does not block it."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        server.close()  # the side that closes first holds TIME_WAIT
        client.close()
    assert port_free(port)


def test_garbage_or_privileged_ports_are_not_reused(tmp_path: Path) -> None:
    for text in ("", "x", "22", "1023", "70000", "-1"):
        (tmp_path / paths.SSH_PORT).write_text(text)
        assert 1024 <= ssh_port_for(tmp_path) <= 65535  # 22 and 1023 would need root: never taken over
