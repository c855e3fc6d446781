"""wsl.exe's recorded outputs (tests/fixtures/wsl/index.json says each one's source) and a runner replaying them.

The replaying runner stands where devenv.runner.run does for devenv.backends.drivers.wslexe:
it answers an argv with the bytes and exit code recorded for it, decoded by the
decoder the caller passes (as the real runner does with wsl.exe's real bytes),
and keeps every call so a test can assert the exact command lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devenv.runner import Result

FIXTURES = Path(__file__).parent / "fixtures" / "wsl"
INDEX = json.loads((FIXTURES / "index.json").read_text())["files"]


def data(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def exit_of(name: str) -> int:
    return int(INDEX[name]["exit"])


@dataclass
class Call:
    argv: tuple[str, ...]
    env: dict[str, str]
    timeout: float | None
    input: bytes | None


@dataclass
class Replay:
    """argv (after the program) -> a fixture's name, or (bytes, exit code) made up by a test."""

    answers: dict[tuple[str, ...], str | tuple[bytes, int]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def __call__(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        decode: Callable[[bytes], str] | None = None,
    ) -> Result:
        args = tuple(argv)
        raw = input.encode() if isinstance(input, str) else input
        self.calls.append(Call(args, dict(env or {}), timeout, raw))
        answer = self.answers.get(args[1:])
        if answer is None:
            raise AssertionError(f"no recorded answer for {args[1:]}")
        out, code = (data(answer), exit_of(answer)) if isinstance(answer, str) else answer
        text = decode(out) if decode is not None else out.decode()
        return Result(args, code, text, "")

    @property
    def argvs(self) -> list[tuple[str, ...]]:
        return [c.argv for c in self.calls]
