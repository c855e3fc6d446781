"""Backends by name (devenv/registry.py), imported only when used.

A backend whose optional dependency is missing (libvirt-python, pywinrm) fails
with the exact install command, not an ImportError. A VM driver comes back
inside the shared VM backend, which is the only Backend a hypervisor has.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, cast

from devenv.errors import BackendUnavailable
from devenv.registry import REGISTRY, Entry, entry, names, register, unregister

if TYPE_CHECKING:
    from devenv.backends.base import Backend

__all__ = ["REGISTRY", "Entry", "entry", "load", "names", "register", "unregister"]


def load(name: str) -> Backend:
    """Import and instantiate a backend by name."""
    e = entry(name)
    made = _construct(e)
    if not e.driver:
        return cast("Backend", made)
    from devenv.backends.vm import VmBackend

    return VmBackend(made)


def _construct(e: Entry) -> Any:
    module_name, _, class_name = e.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "a module"
        if e.extra and not missing.startswith("devenv"):
            raise BackendUnavailable(
                f"backend `{e.name}` needs the Python package `{missing}`, which is not installed",
                f"pip install 'devenv[{e.extra}]'",
            ) from None
        raise
    return getattr(module, class_name)()
