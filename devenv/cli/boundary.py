"""The one place where failures become a message, a hint and an exit code.

No traceback reaches the user unless DEVENV_DEBUG=1 asks for it; an unexpected
exception is reported as a bug with its own exit code.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

from devenv.errors import DevenvError, ExitCode, debugging


def report(message: str, hint: str = "") -> None:
    sys.stderr.write(f"devenv: error: {message}\n")
    if hint:
        sys.stderr.write(f"  hint: {hint}\n")
    sys.stderr.flush()


def guarded(fn: Callable[[], int | None]) -> int:
    try:
        return fn() or 0
    except DevenvError as e:
        if debugging():
            import traceback

            traceback.print_exc()
        report(e.message, e.hint)
        return int(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\ndevenv: interrupted\n")
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # the reader went away (`devenv list | head`); not an error worth a message
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except OSError as e:
        from pathlib import Path

        from devenv import hostdisk, paths

        if not hostdisk.is_full(e):
            return _internal(e)
        # a full disk is the user's to fix, wherever devenv met it: the places that write much say it
        # themselves with the room they need; any other write (a record, a log line) is said here
        where = Path(e.filename) if isinstance(e.filename, str) else Path(paths.home())
        err = hostdisk.full(where, None, "the files devenv keeps")
        report(err.message, err.hint)
        return int(err.exit_code)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:
        return _internal(e)


def _internal(e: BaseException) -> int:
    if debugging():
        import traceback

        traceback.print_exc()
    report(
        f"internal error: {type(e).__name__}: {e}",
        "this is a bug in devenv; run again with DEVENV_DEBUG=1 and report the traceback",
    )
    return int(ExitCode.INTERNAL)
