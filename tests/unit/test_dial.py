"""dial_answering against real loopback servers that behave as a booting guest's forwarded port does."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from devenv.transport.dial import dial_answering

BANNER = b"SSH-2.0-test\r\n"


class Port:
    """Accepts everything; `behave(index, age)` says per connection: "hold", "close", or seconds to wait, then answer."""

    def __init__(self, behave: Callable[[int, float], str | float]) -> None:
        self.behave = behave
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.born = time.monotonic()
        self.accepted = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            what = self.behave(self.accepted, time.monotonic() - self.born)
            self.accepted += 1
            if what == "hold":
                self.held.append(c)
            elif what == "close":
                c.close()
            else:
                threading.Thread(target=self._answer, args=(c, float(what)), daemon=True).start()

    @staticmethod
    def _answer(c: socket.socket, after: float) -> None:
        time.sleep(after)
        try:
            c.sendall(BANNER)
            c.recv(1)  # keep it open until the client is done
        except OSError:
            pass
        c.close()

    def close(self) -> None:
        self.listener.close()
        for c in self.held:
            c.close()


@pytest.fixture
def port() -> Iterator[Callable[[Callable[[int, float], str | float]], Port]]:
    made: list[Port] = []

    def make(behave: Callable[[int, float], str | float]) -> Port:
        made.append(Port(behave))
        return made[-1]

    yield make
    for p in made:
        p.close()


def _banner(s: socket.socket) -> bytes:
    with s:
        s.settimeout(5)
        return s.recv(len(BANNER))


def test_a_connection_made_before_the_guest_answers_does_not_hold_up_the_one_after(port: Callable[..., Port]) -> None:
    """Connections of the first 2.5 s are never answered (lost SYN); the first later one wins, within ~1 s."""
    p = port(lambda i, age: "hold" if age < 2.5 else 0.0)
    t0 = time.monotonic()
    s = dial_answering("127.0.0.1", p.port, 20)
    took = time.monotonic() - t0
    assert _banner(s) == BANNER  # peeked, not consumed
    assert 2.5 <= took < 4.0, took
    assert p.held


def test_a_slow_server_is_waited_for_while_new_connections_race(port: Callable[..., Port]) -> None:
    """Every connection answers only after 2.5 s: the first one still wins; none is given up early."""
    p = port(lambda i, age: 2.5)
    t0 = time.monotonic()
    s = dial_answering("127.0.0.1", p.port, 20, every=0.5)
    assert _banner(s) == BANNER
    assert time.monotonic() - t0 < 3.5
    assert p.accepted >= 3  # it raced


def test_closed_connections_are_retried_soon(port: Callable[..., Port]) -> None:
    """The guest is up but its server is not: EOF at once, then a new try well before `every` has passed."""
    p = port(lambda i, age: "close" if i < 5 else 0.0)
    t0 = time.monotonic()
    s = dial_answering("127.0.0.1", p.port, 20, every=5.0)
    assert _banner(s) == BANNER
    assert time.monotonic() - t0 < 3.0  # 5 closes, each retried after ~0.2 s, not after 5 s


def test_nothing_listening_then_something() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    number = probe.getsockname()[1]
    probe.close()  # refused from now on

    def later() -> None:
        time.sleep(1.0)
        listener = socket.create_server(("127.0.0.1", number))
        c, _ = listener.accept()
        c.sendall(BANNER)
        time.sleep(1)
        c.close()
        listener.close()

    threading.Thread(target=later, daemon=True).start()
    assert _banner(dial_answering("127.0.0.1", number, 10)) == BANNER


def test_the_deadline_and_the_tick_end_the_wait(port: Callable[..., Port]) -> None:
    p = port(lambda i, age: "hold")
    t0 = time.monotonic()
    with pytest.raises(OSError):
        dial_answering("127.0.0.1", p.port, 1.5)
    assert 1.5 <= time.monotonic() - t0 < 3.0

    class Gone(Exception):
        pass

    calls = []

    def tick() -> None:
        calls.append(1)
        if len(calls) > 2:
            raise Gone

    with pytest.raises(Gone):
        dial_answering("127.0.0.1", p.port, 30, every=0.2, tick=tick)
