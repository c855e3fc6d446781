"""Where devenv keeps things. Every file name is a constant here.

The state root comes from platformdirs (per user, never a system path) and is
overridden by DEVENV_HOME. Each instance has one directory, created 0700 because
it holds private keys and sockets.

The module imports only os and sys at load time: `devenv exec`'s warm path and
the host agent's client read these names before anything else, and pathlib
(~3 ms) or platformdirs (~12 ms) would cost every call. The str functions
serve them; the Path functions everyone else.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

ENV_HOME = "DEVENV_HOME"
ENV_CACHE = "DEVENV_CACHE"
ENV_INSTANCE = "DEVENV_INSTANCE"

PROJECT_CONFIG = "devenv.toml"

INSTANCES_DIR = "instances"

# Files inside one instance directory.
INSTANCE_CONFIG = "devenv.toml"  # the resolved config this instance was created with
STARTED_MARKER = "started"  # present while the user wants the instance running
PROVISIONED = "provisioned"  # a VM's guest reported ready once: its user, groups and agent unit exist
OP_LOCK = "op.lock"  # flock held by the start, stop or delete running on the instance (devenv/oplock.py)
DISK = "disk.qcow2"
CIDATA = "cidata.iso"
SERIAL_LOG = "serial.log"
QEMU_PID = "qemu.pid"
QMP_SOCK = "qmp.sock"
RELAY_SOCK = "relay.sock"  # the virtio-serial port the host agent's SSH session goes through (hostagent/relay.py)
RELAY_STATE = "relay.state"  # "ok" or "absent": whether this guest's relay answered the host agent
SSH_PORT = "ssh.port"
SSH_CONFIG = "ssh.config"  # `devenv ssh-config`, kept current for an `Include` in ~/.ssh/config
SSH_DIR = "ssh"
SSH_KEY = "ssh/id_ed25519"
SSH_PUBKEY = "ssh/id_ed25519.pub"
SSH_HOST_KEY = "ssh/ssh_host_ed25519_key"
SSH_HOST_PUBKEY = "ssh/ssh_host_ed25519_key.pub"
SSH_KNOWN_HOSTS = "ssh/known_hosts"
HOSTAGENT_PID = "hostagent.pid"
HOSTAGENT_SOCK = "hostagent.sock"
HOSTAGENT_TOKEN = "hostagent.token"  # the loopback TCP control channel: {"port", "token"}, 0600
HOSTAGENT_LOG = "hostagent.log"
EVENTS_LOG = "events.jsonl"
SOCK_DIR = "sock"
ENGINE_SOCK = "sock/docker.sock"

# unix sockets must fit sun_path: 108 bytes on Linux, 104 on macOS.
SUN_PATH_MAX = 104


def home_str() -> str | None:
    """DEVENV_HOME, else platformdirs' user data dir on Linux and macOS (computed, not imported), else None."""
    override = os.environ.get(ENV_HOME)
    if override:
        return os.path.abspath(os.path.expanduser(override))
    if sys.platform.startswith("linux"):
        xdg = os.environ.get("XDG_DATA_HOME", "").strip()
        return os.path.join(xdg if xdg else os.path.expanduser("~/.local/share"), "devenv")
    if sys.platform == "darwin":
        return os.path.join(os.path.expanduser("~/Library/Application Support"), "devenv")
    return None


def home() -> Path:
    """The state root: DEVENV_HOME, else the platform's per-user data dir."""
    from pathlib import Path

    quick = home_str()
    if quick is not None:
        return Path(quick)
    from platformdirs import user_data_path

    return user_data_path("devenv", appauthor=False)


def instance_dir_str(name: str) -> str:
    root = home_str()
    return os.path.join(root if root is not None else str(home()), INSTANCES_DIR, name)


def cache_dir() -> Path:
    """Downloaded and built images; shared by all instances, kept across deletes."""
    from pathlib import Path

    override = os.environ.get(ENV_CACHE)
    if override:
        return Path(override).expanduser().absolute()
    from platformdirs import user_cache_path

    return user_cache_path("devenv", appauthor=False)


def instances_root() -> Path:
    return home() / INSTANCES_DIR


def instance_dir(name: str) -> Path:
    return instances_root() / name


def packaged_dir(name: str) -> Path | None:
    """A data folder shipped with devenv (vmimages, provisioning): a checkout's
    top-level one, else the wheel's copy in devenv/_data (pyproject.toml)."""
    from pathlib import Path

    package = Path(__file__).resolve().parent
    for candidate in (package.parent / name, package / "_data" / name):
        if candidate.is_dir():
            return candidate
    return None


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make the leaf 0700 whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def socket_path_fits(path: Path) -> bool:
    return len(os.fsencode(str(path))) < SUN_PATH_MAX
