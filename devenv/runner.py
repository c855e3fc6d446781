"""One way to run external programs (qemu-img, wsl.exe, powershell, debootstrap).

A run returns a Result value; the caller decides whether a non-zero exit is an
error. When it is, the error names the command and shows the tail of its output,
so a failure deep inside a tool is diagnosable from the one message the user sees.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from devenv.errors import BackendUnavailable, CommandFailed, Timeout

TAIL_LINES = 12


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = TAIL_LINES) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])

    def check(self, hint: str = "") -> Result:
        """Return self when the command succeeded, else raise CommandFailed."""
        if self.ok:
            return self
        tail = self.tail()
        detail = f"\n{tail}" if tail else ""
        raise CommandFailed(
            f"`{shlex.join(self.argv)}` exited with {self.returncode}{detail}",
            hint or "run the command above by hand to see the whole output",
        )


def run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    check: bool = False,
    hint: str = "",
    decode: Callable[[bytes], str] | None = None,
) -> Result:
    """Run a program to completion, capturing its output as text.

    `decode` turns the output's bytes into text for a program that does not
    write UTF-8 (wsl.exe writes UTF-16LE unless told otherwise, and not always then).
    """
    args = tuple(str(a) for a in argv)
    data = input.encode() if isinstance(input, str) else input
    try:
        proc = subprocess.run(
            args,
            input=data,
            capture_output=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            stdin=subprocess.DEVNULL if data is None else None,
        )
    except FileNotFoundError:
        raise BackendUnavailable(f"`{args[0]}` is not installed or not on PATH", hint) from None
    except subprocess.TimeoutExpired:
        raise Timeout(f"`{shlex.join(args)}` did not finish within {timeout:g} s", hint) from None
    text = decode or (lambda data: data.decode(errors="replace"))
    result = Result(args, proc.returncode, text(proc.stdout), text(proc.stderr))
    return result.check(hint) if check else result
