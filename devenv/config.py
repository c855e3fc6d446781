"""devenv.toml: load, fill defaults, validate collecting every error at once.

A project keeps a devenv.toml in its folder (found in the current directory or
a parent, like a Vagrantfile). Each instance keeps its own resolved copy, so an
instance keeps working when the project file later changes. Every problem is
reported as "FILE:LINE: field `x` must be ..." and all problems are reported
together, so one edit round fixes them all.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devenv import paths
from devenv.errors import ConfigError, UsageError
from devenv.sizes import format_size as format_size
from devenv.sizes import parse_size as parse_size

RUNTIMES = ("docker", "podman", "containerd")
STOP_MODES = ("suspend", "shutdown")
HYPERV_AUTHS = ("ntlm", "kerberos", "credssp", "basic")
ACCELERATORS = ("auto", "kvm", "hvf", "whpx", "tcg")
DEFAULT_IMAGE = "debian-12"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
NAME_MAX = 63  # one DNS label: the name becomes the guest's hostname


@dataclass(frozen=True)
class Mount:
    location: str
    mount_point: str = ""  # empty: the same path as on the host
    writable: bool = False


@dataclass(frozen=True)
class PortForward:
    guest: int
    host: int = 0  # 0: the same number as the guest port
    protocol: str = "tcp"


@dataclass(frozen=True)
class Provision:
    script: str
    mode: str = "system"  # system: as root; user: as the devenv user


@dataclass(frozen=True)
class Config:
    name: str = "default"
    backend: str = "auto"
    image: str = DEFAULT_IMAGE
    cpus: int = 2
    memory: int = 2 * 1024**3
    disk: int = 20 * 1024**3
    runtime: str = "docker"
    accelerator: str = "auto"
    machine: str = "auto"
    # the guest's CPU architecture: auto (the host's), x86_64 or aarch64. Another one than
    # the host's is emulated (QEMU under TCG), as Lima's and Colima's `arch` are.
    arch: str = "auto"
    # false: the guest kernel boots with `norandmaps`. Opt-in: it trades address-space
    # randomisation in the guest for speed under TCG, where QEMU (7.2, as measured) translates
    # every randomised process's code again (process start ~50 -> ~17 ms, boot ~20% faster).
    aslr: bool = True
    # the size of QEMU's translation cache when the guest runs under TCG (no KVM, hvf or whpx, or
    # another arch emulated); unused otherwise. Its pages stay resident once touched, so it is
    # what TCG adds to QEMU's RSS. Measured under TCG (2 cores): 64 MiB keeps an idle instance's
    # RSS within 300 MiB of the memory the guest uses; 256 MiB costs 220 MiB more and translates
    # less often (a first `docker run` ~12 s instead of ~17 s, a boot ~10% faster).
    tcg_cache: int = 64 * 1024**2
    # what a plain `devenv stop` does where the backend can save a running guest: "suspend" (the
    # next start restores it in about a second) or "shutdown" (the guest powers off; the next start
    # boots it). Elsewhere a stop always shuts down. `stop --suspend` / `--shutdown` choose once.
    stop: str = "suspend"
    # the libvirt daemon of backend "libvirt": "" picks $LIBVIRT_DEFAULT_URI, else qemu:///system
    # when it lets this user in, else qemu:///session (devenv/backends/drivers/libvirturi.py)
    libvirt_uri: str = ""
    # backend "hyperv": "" runs Hyper-V on this Windows host through PowerShell; a host name reaches
    # another Windows host's over WinRM (HTTPS, 5986). The password never goes here: it comes from
    # DEVENV_HYPERV_PASSWORD or the OS keyring (devenv/backends/drivers/powershell.py).
    hyperv_host: str = ""
    hyperv_user: str = ""
    hyperv_auth: str = "ntlm"  # ntlm, kerberos, credssp or basic (the last two over HTTPS only)
    hyperv_ca_file: str = ""  # a PEM file with the CA the WinRM host's certificate chains to
    hyperv_switch: str = ""  # a Hyper-V virtual switch by name; "": the Default Switch
    mounts: tuple[Mount, ...] = ()
    ports: tuple[PortForward, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    provision: tuple[Provision, ...] = ()

    def to_toml(self) -> str:
        return dump_toml(self)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = {
    "name",
    "backend",
    "image",
    "cpus",
    "memory",
    "disk",
    "runtime",
    "accelerator",
    "machine",
    "arch",
    "aslr",
    "tcg_cache",
    "stop",
    "libvirt_uri",
    "hyperv_host",
    "hyperv_user",
    "hyperv_auth",
    "hyperv_ca_file",
    "hyperv_switch",
    "mounts",
    "ports",
    "env",
    "provision",
}
MOUNT_FIELDS = {"location", "mount_point", "writable"}
PORT_FIELDS = {"guest", "host", "protocol"}
PROVISION_FIELDS = {"script", "mode"}


def validate_name(name: object, where: str = "instance name") -> str:
    """The single rule for instance names, shared by config and CLI flags."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"{where} must be a non-empty string", "use letters, digits, '.', '_' and '-'")
    if len(name) > NAME_MAX:
        raise UsageError(
            f"{where} is {len(name)} characters long; at most {NAME_MAX} are allowed",
            "choose a shorter name (it becomes the guest's hostname)",
        )
    if not NAME_RE.match(name):
        raise UsageError(
            f"{where} `{name}` may only contain letters, digits, '.', '_' and '-', "
            "and must start with a letter or digit",
            "for example: devenv start -n myproject",
        )
    return name


def find_project_config(start: Path | None = None) -> Path | None:
    """The nearest devenv.toml in `start` (default: cwd) or one of its parents."""
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        candidate = folder / paths.PROJECT_CONFIG
        if candidate.is_file():
            return candidate
    return None


class _Locator:
    """Finds the line of a key in TOML text; tomllib does not report positions."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"'-]+)\s*\]\]?")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\"'-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        table: tuple[Any, ...] = ()
        counts: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                name = header.group(2).strip("\"'")
                if header.group(1) == "[[":
                    counts[name] = counts.get(name, -1) + 1
                    table = (name, counts[name])
                else:
                    table = tuple(name.split("."))
                self.lines.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                self.lines.setdefault((*table, key.group(1).strip("\"'")), number)

    def line(self, *path: Any) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


class _Problems:
    def __init__(self, source: str, locator: _Locator | None) -> None:
        self.source = source
        self.locator = locator
        self.items: list[str] = []

    def add(self, path: tuple[Any, ...], what: str) -> None:
        line = self.locator.line(*path) if self.locator else None
        where = f"{self.source}:{line}" if line else self.source
        label = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
        self.items.append(f"{where}: field `{label}` {what}")

    def unknown(self, path: tuple[Any, ...], key: str, known: set[str]) -> None:
        import difflib  # only for a did-you-mean

        close = difflib.get_close_matches(key, sorted(known), n=1)
        suggestion = f"; did you mean `{close[0]}`?" if close else f"; known fields: {', '.join(sorted(known))}"
        self.add((*path, key), f"is not a known field{suggestion}")


def line_of(path: Path, *keys: Any) -> str:
    """`path:LINE` of a key, for errors found after loading (such as a machine the image cannot boot).

    `keys` is the key's path: ("machine",), or ("mounts", 0, "location") for a table of an array.
    """
    try:
        line = _Locator(path.read_text(encoding="utf-8")).line(*keys)
    except OSError:
        line = None
    return f"{path}:{line}" if line else str(path)


def load_file(path: Path) -> Config:
    """Parse and validate one devenv.toml; raise ConfigError listing every problem."""
    import tomllib

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        where = f"{path}:{m.group(1)}" if m else str(path)
        raise ConfigError([f"{where}: not valid TOML: {reason}"], "see https://toml.io for the syntax") from None
    return from_dict(data, source=str(path), locator=_Locator(text))


def from_dict(data: dict[str, Any], source: str = "devenv.toml", locator: _Locator | None = None) -> Config:
    p = _Problems(source, locator)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "hyperv_password":
            p.add((key,), "is never read from a file: set DEVENV_HYPERV_PASSWORD or store it in the OS keyring")
            continue
        if key not in FIELDS:
            p.unknown((), key, FIELDS)
            continue
        try:
            values[key] = _check_field(key, value, p)
        except ValueError as e:
            p.add((key,), str(e))
    if p.items:
        raise ConfigError(p.items)
    return Config(**{k: v for k, v in values.items() if v is not None})


def _check_field(key: str, value: Any, p: _Problems) -> Any:
    if key == "name":
        try:
            return validate_name(value, "name")
        except UsageError as e:
            raise ValueError(e.message.removeprefix("name ")) from None
    if key in ("backend", "runtime", "accelerator", "machine", "stop"):
        from devenv import registry
        from devenv.machines import MACHINE_ARCH

        allowed = {
            "backend": ("auto", *registry.names()),
            "runtime": RUNTIMES,
            "accelerator": ACCELERATORS,
            "machine": ("auto", *MACHINE_ARCH),  # auto: q35 on x86_64, virt on aarch64
            "stop": STOP_MODES,
        }[key]
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, not {value!r}")
        return value
    if key == "image":
        if not isinstance(value, str) or not value.strip():
            raise ValueError('must be an image name such as "debian-12" or a path to a qcow2 file')
        return value
    if key == "arch":
        from devenv.hostos import normalize_arch
        from devenv.images.definitions import ARCHES

        norm = normalize_arch(value) if isinstance(value, str) else None
        if value != "auto" and norm not in ARCHES:
            raise ValueError(f"must be one of auto, {', '.join(ARCHES)} (or amd64, arm64), not {value!r}")
        return "auto" if value == "auto" else norm
    if key == "libvirt_uri":
        problem = _libvirt_uri_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value
    if key in ("hyperv_host", "hyperv_user", "hyperv_ca_file", "hyperv_switch"):
        if not isinstance(value, str) or any(c in value for c in "\n\r\x00"):
            raise ValueError(f"must be a one-line string, not {value!r}")
        return value
    if key == "hyperv_auth":
        if value not in HYPERV_AUTHS:
            raise ValueError(f"must be one of {', '.join(HYPERV_AUTHS)}, not {value!r}")
        return value
    if key == "aslr":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {value!r}")
        return value
    if key == "cpus":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
            raise ValueError(f"must be a whole number from 1 to 256, not {value!r}")
        return value
    if key in ("memory", "disk"):
        size = parse_size(value)
        floor = 256 * 1024**2 if key == "memory" else 1024**3
        if size < floor:
            raise ValueError(f"must be at least {format_size(floor)}, not {value!r}")
        return size
    if key == "tcg_cache":
        size = parse_size(value)
        if not 16 * 1024**2 <= size <= 2 * 1024**3 or size % 1024**2:
            raise ValueError(f'must be whole MiB from 16MiB to 2GiB, such as "256MiB", not {value!r}')
        return size
    if key == "env":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError('must be a table of strings, such as env = { EDITOR = "vim" }')
        bad = [k for k in value if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k)]
        if bad:
            raise ValueError(f"has invalid variable names: {', '.join(bad)}")
        return dict(value)
    if key == "mounts":
        return tuple(_check_list(key, value, p, MOUNT_FIELDS, _mount))
    if key == "ports":
        return tuple(_check_list(key, value, p, PORT_FIELDS, _port))
    if key == "provision":
        return tuple(_check_list(key, value, p, PROVISION_FIELDS, _provision))
    raise AssertionError(key)  # pragma: no cover - FIELDS and this function agree


def _libvirt_uri_problem(value: object) -> str | None:
    """libvirt's URI syntax, `driver[+transport]://[user@host]/path`; "" is the default."""
    if not isinstance(value, str):
        return f"must be a string, not {value!r}"
    if value and not re.match(r"^[a-z][a-z0-9]*(\+[a-z0-9]+)?://\S*$", value):
        return f'must be a libvirt URI such as "qemu:///session" or "qemu+ssh://user@host/system", not {value!r}'
    return None


def _check_list(key: str, value: Any, p: _Problems, known: set[str], make: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of tables ([[{key}]] sections)")
    out = []
    for i, item in enumerate(value):
        if key == "provision" and isinstance(item, str):
            item = {"script": item}
        if not isinstance(item, dict):
            p.add((key, i), "must be a table")
            continue
        for k in item:
            if k not in known:
                p.unknown((key, i), k, known)
        try:
            out.append(make({k: v for k, v in item.items() if k in known}))
        except ValueError as e:
            field_name, _, reason = str(e).partition(" ")
            p.add((key, i, field_name), reason)
    return out


# The one rule for where a share may sit in the guest, for [[mounts]] and the same-path project mount
# alike. A share over these would hide what the guest runs on (programs, libraries, config, state, the
# kernel's own file systems): refused at and under them. GUEST_SYSTEM_EXACT are refused only as
# themselves (a share at /home would hide the guest user's keys; /home/ann/proj is fine).
GUEST_SYSTEM_DIRS = frozenset(
    {"/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin", "/sys"}
    | {"/usr", "/var"}
)
GUEST_SYSTEM_EXACT = frozenset({"/", "/home", "/home/devenv", "/root", "/tmp"})


def mount_point_problem(point: str) -> str | None:
    """Why `point` cannot be a share's place in the guest; None when it can."""
    import posixpath

    if not point.startswith("/"):
        return "must be an absolute guest path"
    if "\x00" in point or "\n" in point:
        return "must not contain NUL or newline characters"
    if posixpath.normpath(point) != point or "//" in point:  # normpath keeps a leading `//` (POSIX allows it)
        return f"must be written plainly (no `.`, `..`, `//` or trailing `/`): {posixpath.normpath(point)!r}?"
    top = "/" + point.split("/")[1]
    if point in GUEST_SYSTEM_EXACT or top in GUEST_SYSTEM_DIRS:
        return f"must not be a guest system folder ({point}): the share would hide what the guest runs on"
    return None


def _mount(item: dict[str, Any]) -> Mount:
    location = item.get("location")
    if not isinstance(location, str) or not location:
        raise ValueError("location must be a host folder path")
    mount_point = item.get("mount_point", "")
    if not isinstance(mount_point, str):
        raise ValueError("mount_point must be an absolute guest path")
    if mount_point and (problem := mount_point_problem(mount_point)) is not None:
        raise ValueError(f"mount_point {problem}")
    writable = item.get("writable", False)
    if not isinstance(writable, bool):
        raise ValueError("writable must be true or false")
    return Mount(location=location, mount_point=mount_point, writable=writable)


def _port(item: dict[str, Any]) -> PortForward:
    guest = item.get("guest")
    host = item.get("host", 0)
    for name, n in (("guest", guest), ("host", host)):
        if isinstance(n, bool) or not isinstance(n, int) or not (0 if name == "host" else 1) <= n <= 65535:
            raise ValueError(f"{name} must be a port number from 1 to 65535, not {n!r}")
    protocol = item.get("protocol", "tcp")
    if protocol != "tcp":
        raise ValueError(f'protocol must be "tcp", not {protocol!r}')
    assert isinstance(guest, int) and isinstance(host, int)
    return PortForward(guest=guest, host=host, protocol=protocol)


def _provision(item: dict[str, Any]) -> Provision:
    script = item.get("script")
    if not isinstance(script, str) or not script.strip():
        raise ValueError("script must be a non-empty shell script")
    mode = item.get("mode", "system")
    if mode not in ("system", "user"):
        raise ValueError(f'mode must be "system" or "user", not {mode!r}')
    return Provision(script=script, mode=mode)


def with_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Apply command-line flags (already named like config fields) and re-validate."""
    data = {k: v for k, v in overrides.items() if v is not None}
    if not data:
        return cfg
    p = _Problems("command line", None)
    changes: dict[str, Any] = {}
    for key, value in data.items():
        try:
            changes[key] = _check_field(key, value, p)
        except ValueError as e:
            p.items.append(f"--{key} {e}")
    if p.items:
        raise UsageError(p.items[0], "see `devenv create --help`")
    from dataclasses import replace

    return replace(cfg, **changes)


def resolve_name(explicit: str | None, project: Path | None) -> str:
    """-n/--name, else the name in the nearest devenv.toml, else DEVENV_INSTANCE, else default."""
    if explicit is not None:
        return validate_name(explicit)
    if project is not None:
        name = peek_name(project)
        if name:
            return validate_name(name, f"{project}: name")
    env = os.environ.get(paths.ENV_INSTANCE)
    if env:
        return validate_name(env, f"{paths.ENV_INSTANCE}")
    return "default"


def peek_name(project: Path) -> str | None:
    """Read only `name` from a project file: naming must not fail on unrelated errors."""
    import tomllib

    try:
        value = tomllib.loads(project.read_text(encoding="utf-8")).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return value if isinstance(value, str) else None


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dump_toml(cfg: Config) -> str:
    lines = [
        "# Written by devenv: the resolved config of this instance.",
        f"name = {_toml_str(cfg.name)}",
        f"backend = {_toml_str(cfg.backend)}",
        f"image = {_toml_str(cfg.image)}",
        f"cpus = {cfg.cpus}",
        f"memory = {_toml_str(format_size(cfg.memory))}",
        f"disk = {_toml_str(format_size(cfg.disk))}",
        f"runtime = {_toml_str(cfg.runtime)}",
        f"accelerator = {_toml_str(cfg.accelerator)}",
    ]
    # machine, arch, aslr and tcg_cache only when set: an older devenv can still read the copy of a default instance
    if cfg.machine != "auto":
        lines.append(f"machine = {_toml_str(cfg.machine)}")
    if cfg.arch != "auto":
        lines.append(f"arch = {_toml_str(cfg.arch)}")
    if not cfg.aslr:
        lines.append("aslr = false")
    if cfg.tcg_cache != Config.tcg_cache:
        lines.append(f"tcg_cache = {_toml_str(format_size(cfg.tcg_cache))}")
    if cfg.stop != "suspend":
        lines.append(f"stop = {_toml_str(cfg.stop)}")
    if cfg.libvirt_uri:
        lines.append(f"libvirt_uri = {_toml_str(cfg.libvirt_uri)}")
    for key in ("hyperv_host", "hyperv_user", "hyperv_ca_file", "hyperv_switch"):
        if getattr(cfg, key):
            lines.append(f"{key} = {_toml_str(getattr(cfg, key))}")
    if cfg.hyperv_auth != Config.hyperv_auth:
        lines.append(f"hyperv_auth = {_toml_str(cfg.hyperv_auth)}")
    if cfg.env:
        inner = ", ".join(f"{k} = {_toml_str(v)}" for k, v in cfg.env.items())
        lines.append(f"env = {{ {inner} }}")
    for m in cfg.mounts:
        lines += ["", "[[mounts]]", f"location = {_toml_str(m.location)}"]
        if m.mount_point:
            lines.append(f"mount_point = {_toml_str(m.mount_point)}")
        lines.append(f"writable = {'true' if m.writable else 'false'}")
    for port in cfg.ports:
        lines += ["", "[[ports]]", f"guest = {port.guest}", f"host = {port.host}"]
    for prov in cfg.provision:
        lines += ["", "[[provision]]", f"mode = {_toml_str(prov.mode)}", f"script = {_toml_str(prov.script)}"]
    return "\n".join(lines) + "\n"
