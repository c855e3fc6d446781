"""What devenv needs to run on a Windows host, checked here without one.

mypy --platform win32 (ci/test.sh) checks the types of the same modules;
this checks what it cannot: that none of them imports a POSIX-only module
when it is imported (fcntl, termios, pty and the rest exist only on POSIX,
so such an import fails on Windows before any code runs), and the console
modes of the interactive shell. No Windows host has run these modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import devenv
from devenv.transport import terminal

POSIX_ONLY = {"fcntl", "termios", "pty", "tty", "pwd", "grp", "resource", "posix", "syslog", "crypt"}
# modules that run in the Linux guest, or only on Linux hosts (mypy's win32 check leaves them out too)
NOT_ON_WINDOWS = ("guestagent/", "testing/", "provision/earlyboot.py", "backends/drivers/libvirt", "images/build.py")
NOT_ON_WINDOWS += ("images/debian.py",)
ROOT = Path(devenv.__file__).parent


def _host_modules() -> list[Path]:
    return [
        p
        for p in sorted(ROOT.rglob("*.py"))
        if not any(p.relative_to(ROOT).as_posix().startswith(skip) for skip in NOT_ON_WINDOWS)
    ]


def _top_level_imports(tree: ast.Module) -> set[str]:
    """Imports run when the module is imported: its own body, and in `if`/`try` blocks at that level."""
    found: set[str] = set()
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.If | ast.Try):
            todo += [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
            for handler in getattr(node, "handlers", []):
                todo += handler.body
    return found


def test_no_host_module_imports_a_posix_only_module_at_import_time() -> None:
    modules = _host_modules()
    assert len(modules) > 60  # the walk found the package
    bad = {str(p.relative_to(ROOT)): sorted(_top_level_imports(ast.parse(p.read_text())) & POSIX_ONLY) for p in modules}
    assert {k: v for k, v in bad.items() if v} == {}


def test_windows_console_raw_modes() -> None:
    """Ctrl-C reaches the guest as the byte 0x03 (processed input off), no line editing or echo, VT both ways."""
    cooked_in, cooked_out = 0x1F7, 0x3  # a cmd.exe console's usual input and output modes
    raw_in, raw_out = terminal.windows_raw_modes(cooked_in, cooked_out)
    assert raw_in == 0x1F7 & ~0x7 | 0x200
    assert raw_in & 0x1 == 0  # ENABLE_PROCESSED_INPUT off: Ctrl-C is a key, not a signal to devenv
    assert raw_out == 0x7  # ENABLE_VIRTUAL_TERMINAL_PROCESSING added, the rest kept


def test_raw_terminal_leaves_a_non_tty_alone(tmp_path: Path) -> None:
    with open(tmp_path / "f", "wb") as f, terminal.raw_terminal(f.fileno()):
        pass


@pytest.mark.parametrize("module", ["devenv.pidutil", "devenv.transport.terminal", "devenv.hostdisk"])
def test_windows_branches_are_platform_checks_mypy_reads(module: str) -> None:
    """`sys.platform == "win32"`, not `os.name == "nt"`: only the first lets mypy --platform win32 check the branch."""
    import importlib

    source = Path(importlib.import_module(module).__file__ or "").read_text()
    assert 'os.name == "nt"' not in source
