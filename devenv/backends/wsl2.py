"""The wsl2 backend: registered, probed by `doctor`, lifecycle still missing."""

from __future__ import annotations

from devenv.backends.pending import PendingBackend


class Wsl2Backend(PendingBackend):
    name = "wsl2"
    missing = "WSL2 lifecycle is not implemented yet (no issue filed)"
