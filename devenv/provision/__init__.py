"""Everything a guest needs before and at its first boot: keys, the first-boot seed, readiness.

The QEMU backend calls prepare_seed() before each start and scan_console() on
the serial log while it waits; the rest is here for tests and other backends.
"""

from devenv.provision.keys import InstanceKeys, ensure_keys, load_keys, pinned_host_key
from devenv.provision.readiness import Readiness, scan_console
from devenv.provision.seed import SeedResult, build_seed_iso, prepare_seed, read_seed_iso

__all__ = [
    "InstanceKeys",
    "Readiness",
    "SeedResult",
    "build_seed_iso",
    "ensure_keys",
    "load_keys",
    "pinned_host_key",
    "prepare_seed",
    "read_seed_iso",
    "scan_console",
]
