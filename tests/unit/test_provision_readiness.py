"""wait_for_sshd: the console's readiness line is the signal to log in; a silent console is probed instead.

The port is a real loopback listener that behaves as QEMU's user-mode net does
while the guest boots: it accepts and never answers.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.provision.readiness import ConsoleWatch, wait_for_sshd
from tests.loopback import Listener, answer_banner, hold_silently


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts every connection and holds it without a byte."""
    with Listener(hold_silently) as port:
        yield port.port


def _later(path: Path, text: str, after: float) -> None:
    def write() -> None:
        time.sleep(after)
        with open(path, "a") as f:
            f.write(text)

    threading.Thread(target=write, daemon=True).start()


@pytest.mark.parametrize("line", ["DEVENV-READY\r\n", "DEVENV-FAILED step=engine rc=1 log=/x\n"])
def test_the_console_line_ends_the_wait_whatever_the_port_does(tmp_path: Path, silent_port: int, line: str) -> None:
    serial = tmp_path / "serial.log"
    serial.write_text("[    1.0] booting\n")
    _later(serial, line, 1.0)
    t0 = time.monotonic()
    assert wait_for_sshd(ConsoleWatch(serial), silent_port, time.monotonic() + 30) is True
    assert 1.0 <= time.monotonic() - t0 < 1.8  # within a console read, not after the held probe's timeout


def test_a_silent_console_falls_back_to_the_banner(tmp_path: Path) -> None:
    with Listener(answer_banner) as sshd:
        console = ConsoleWatch(tmp_path / "no-console.log")
        assert wait_for_sshd(console, sshd.port, time.monotonic() + 10) is True


def test_an_announcing_guest_is_not_probed_when_its_console_speaks_in_time(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    serial.write_text("")
    _later(serial, "DEVENV-READY\r\n", 0.6)
    with Listener(answer_banner) as sshd:
        assert wait_for_sshd(ConsoleWatch(serial), sshd.port, time.monotonic() + 10, first_probe_after=5.0) is True
        assert sshd.accepted == []


def test_a_silent_announcing_guest_is_probed_after_the_delay(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with Listener(answer_banner) as sshd:
        console = ConsoleWatch(tmp_path / "silent.log")
        assert wait_for_sshd(console, sshd.port, time.monotonic() + 10, first_probe_after=1.0) is True
        assert len(sshd.accepted) == 1 and sshd.accepted[0] - t0 >= 1.0


def test_an_infinite_delay_never_probes(tmp_path: Path) -> None:
    """The host agent's boot wait: the console alone, then the deadline; sshd never sees a connection."""
    with Listener(answer_banner) as sshd:
        console = ConsoleWatch(tmp_path / "silent.log")
        assert wait_for_sshd(console, sshd.port, time.monotonic() + 1.0, first_probe_after=math.inf) is False
        assert sshd.accepted == []


def test_nothing_answers_until_the_deadline(tmp_path: Path, silent_port: int) -> None:
    t0 = time.monotonic()
    console = ConsoleWatch(tmp_path / "serial.log")
    assert wait_for_sshd(console, silent_port, time.monotonic() + 1.5, probe_timeout=0.5) is False
    assert time.monotonic() - t0 < 3.0


def test_tick_stops_the_wait(tmp_path: Path, silent_port: int) -> None:
    class Gone(Exception):
        pass

    def tick() -> None:
        raise Gone

    with pytest.raises(Gone):
        wait_for_sshd(ConsoleWatch(tmp_path / "serial.log"), silent_port, time.monotonic() + 30, tick=tick)


def test_the_console_watch_reads_only_what_was_added_and_finds_a_line_split_across_reads(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    serial.write_bytes(b"[    1.0] kernel noise\r\nDEVENV-RE")
    watch = ConsoleWatch(serial)
    assert not watch.poll().done
    with open(serial, "ab") as f:
        f.write(b"ADY\r\n")
    assert watch.poll().ready
    serial.write_bytes(b"")  # later writes change nothing: the boot's answer is kept
    assert watch.poll().ready
    rotated = ConsoleWatch(tmp_path / "next.log")
    (tmp_path / "next.log").write_bytes(b"a long first boot line\n" * 10)
    assert not rotated.poll().done
    (tmp_path / "next.log").write_bytes(b"DEVENV-FAILED step=engine rc=3 log=/x\n")  # shorter: a new file
    assert rotated.poll().detail == {"step": "engine", "rc": "3", "log": "/x"}
