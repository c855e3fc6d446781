"""The libvirt backend: registered, probed by `doctor`, lifecycle still missing.

Importing libvirt here (not lazily) is deliberate: the registry turns the
ImportError into the exact install command for the `libvirt` extra.
"""

from __future__ import annotations

import libvirt  # noqa: F401

from devenv.backends.pending import PendingBackend


class LibvirtBackend(PendingBackend):
    name = "libvirt"
    missing = "libvirt domain lifecycle is not implemented yet (no issue filed)"
