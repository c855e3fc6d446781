"""Which backends exist: a name maps to "module:Class", imported only when used (devenv.backends.load).

A leaf module, so that config validation can name the backends without
importing devenv.backends (which imports config in turn). A VM backend is
named by its driver: `load` wraps the driver in the one VM backend
(devenv/backends/vm) that every hypervisor shares.

DEVENV_EXTRA_DRIVERS adds VM drivers from outside this table, for every
devenv process that inherits it (the CLI, the host agent): "name=module:Class"
items separated by ";". devenv.testing's sshd driver comes in that way in
tests, and a driver kept outside devenv's tree can too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from devenv.errors import UsageError


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:Class": a Backend, or a vm Driver when `driver` is true
    summary: str
    extra: str = ""  # the pip extra that brings its optional dependency
    driver: bool = False  # target is a VM driver, run by devenv.backends.vm.VmBackend


REGISTRY: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("native", "devenv.backends.native:NativeBackend", "the host's own engine (Linux)"),
        Entry("qemu", "devenv.backends.drivers.qemu:QemuDriver", "a QEMU VM (kvm, hvf, whpx or tcg)", driver=True),
        Entry(
            "libvirt",
            "devenv.backends.drivers.libvirtdrv:LibvirtDriver",
            "a libvirt domain (qemu:///system or qemu:///session)",
            "libvirt",
            driver=True,
        ),
        Entry("wsl2", "devenv.backends.drivers.wsl2:Wsl2Driver", "a WSL2 distro (Windows)", driver=True),
        Entry(
            "hyperv",
            "devenv.backends.drivers.hyperv:HypervDriver",
            "a Hyper-V VM, local or over WinRM",
            "winrm",
            driver=True,
        ),
    )
}


EXTRA_ENV = "DEVENV_EXTRA_DRIVERS"


def add_extra_drivers(value: str) -> None:
    for item in value.split(";"):
        name, _, target = item.strip().partition("=")
        if name and ":" in target and name not in REGISTRY:
            REGISTRY[name] = Entry(name.strip(), target.strip(), f"a VM driver named in {EXTRA_ENV}", driver=True)


add_extra_drivers(os.environ.get(EXTRA_ENV, ""))


def register(e: Entry) -> None:
    """Add a backend (the test suite registers devenv.testing's FakeBackend and its sshd driver)."""
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
