"""Backend registry: a name maps to "module:Class" and is imported only when used.

A backend whose optional dependency is missing (libvirt-python, pywinrm) fails
with the exact install command, not an ImportError.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from devenv.errors import BackendUnavailable, UsageError

if TYPE_CHECKING:
    from devenv.backends.base import Backend


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:Class"
    summary: str
    extra: str = ""  # the pip extra that brings its optional dependency


REGISTRY: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("native", "devenv.backends.native:NativeBackend", "the host's own engine (Linux)"),
        Entry("qemu", "devenv.backends.qemu:QemuBackend", "a QEMU VM (kvm, hvf, whpx or tcg)"),
        Entry("libvirt", "devenv.backends.libvirt:LibvirtBackend", "a libvirt domain (qemu:///system)", "libvirt"),
        Entry("wsl2", "devenv.backends.wsl2:Wsl2Backend", "a WSL2 distro (Windows)"),
        Entry("hyperv", "devenv.backends.hyperv:HypervBackend", "a Hyper-V VM, local or over WinRM", "winrm"),
    )
}


def register(e: Entry) -> None:
    """Add a backend (the test suite registers devenv.testing's FakeBackend)."""
    REGISTRY[e.name] = e


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> list[str]:
    return list(REGISTRY)


def entry(name: str) -> Entry:
    try:
        return REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"choose one of: {', '.join(REGISTRY)}"
        raise UsageError(f"unknown backend `{name}`", hint) from None


def load(name: str) -> Backend:
    """Import and instantiate a backend by name."""
    e = entry(name)
    module_name, _, class_name = e.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "a module"
        if e.extra and not missing.startswith("devenv"):
            raise BackendUnavailable(
                f"backend `{name}` needs the Python package `{missing}`, which is not installed",
                f"pip install 'devenv[{e.extra}]'",
            ) from None
        raise
    return cast("Backend", getattr(module, class_name)())
