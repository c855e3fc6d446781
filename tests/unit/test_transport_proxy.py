"""A proxy command (a jump host) as a socket: its output arrives, its exit is EOF at once, OpenSSH gets it escaped."""

from __future__ import annotations

import sys
import time

import pytest

from devenv.provision.readiness import ssh_banner
from devenv.transport.proxy import openssh_proxy_command, proxy_argv, proxy_socket

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a socket as a child's stdio is POSIX only")


def test_only_h_and_p_are_filled_in_and_openssh_gets_other_percents_doubled() -> None:
    proxy = ("ssh", "-W", "%h:%p", "-o", "ProxyUseFdpass=no", "box", "echo", "100%", "%r")
    assert proxy_argv(proxy, "10.0.0.5", 22) == [
        "ssh",
        "-W",
        "10.0.0.5:22",
        "-o",
        "ProxyUseFdpass=no",
        "box",
        "echo",
        "100%",
        "%r",
    ]
    assert openssh_proxy_command(proxy) == "ssh -W %h:%p -o ProxyUseFdpass=no box echo 100%% %%r"


def test_the_commands_output_arrives_and_its_exit_is_eof_not_a_busy_wait() -> None:
    with proxy_socket(("sh", "-c", "printf 'SSH-2.0-test %h %p\\r\\n'"), "guest", 2222) as s:
        s.settimeout(5)
        data = b""
        began = time.monotonic()
        while chunk := s.recv(64):
            data += chunk
        assert data == b"SSH-2.0-test guest 2222\r\n"
        assert time.monotonic() - began < 2  # EOF as soon as the command exited


def test_what_is_written_reaches_the_commands_stdin() -> None:
    with proxy_socket(("sh", "-c", 'read line; echo "got $line"'), "h", 1) as s:
        s.settimeout(5)
        s.sendall(b"hello\n")
        assert s.recv(64) == b"got hello\n"


def test_a_banner_probe_goes_through_the_proxy() -> None:
    assert ssh_banner(1, proxy=("sh", "-c", "printf 'SSH-2.0-x\\r\\n'; sleep 5"))
    began = time.monotonic()
    assert not ssh_banner(1, proxy=("sh", "-c", "exit 1"))  # a proxy that fails is no banner
    assert time.monotonic() - began < 2  # at once: its exit is EOF, not the probe's 5 s timeout
    with pytest.raises(OSError):
        proxy_socket(("/no/such/proxy",), "h", 1).close()
