"""The qemu backend: registered, probed by `doctor`, lifecycle still missing."""

from __future__ import annotations

from devenv.backends.pending import PendingBackend


class QemuBackend(PendingBackend):
    name = "qemu"
    missing = "QEMU VM lifecycle (boot, SSH, guest agent) lands with issue #4, the vertical slice"
