"""The hyperv backend: registered, probed by `doctor`, lifecycle still missing."""

from __future__ import annotations

from devenv.backends.pending import PendingBackend


class HypervBackend(PendingBackend):
    name = "hyperv"
    missing = "Hyper-V lifecycle is not implemented yet (no issue filed)"
