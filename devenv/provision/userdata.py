"""cloud-init user-data and meta-data for one instance.

Rendered from provisioning/cloud-init/*.yaml with string.Template. Every value
that comes from outside (keys, scripts, variables, the agent's source) is
written as a YAML double-quoted scalar by yaml_str(), which escapes everything
YAML would otherwise interpret. That keeps a dependency on a YAML library out
of devenv and makes the output exact and testable byte for byte.

What the guest gets (see the template for the cloud-config keys):
  user `devenv` (uid 1000, key login only, passwordless sudo); the pinned host
  key; the host's time zone and proxy; the config's `env` in /etc/environment;
  the engine setup script, the guest agent and the user's provision scripts in
  /usr/local/lib/devenv; firstboot.sh runs them and prints DEVENV-READY.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from devenv.config import Config, Provision
from devenv.errors import ConfigError
from devenv.guestagent import protocol
from devenv.provision import assets, engines, hostenv
from devenv.provision.keys import InstanceKeys

GUEST_UID = 1000
LIB = engines.GUEST_LIB
FIRSTBOOT = f"{LIB}/firstboot.sh"
ENV_SH = f"{LIB}/env.sh"
ENVIRONMENT = "/etc/environment"
APT_PROXY = "/etc/apt/apt.conf.d/90devenv-proxy"
# Files that hold the config's env and the host's proxy variables, whose URLs may carry a password:
# written 0600, then firstboot.sh makes them 0640 with the guest user's group (it reads them; nobody else).
GUEST_USER_READABLE = (ENV_SH, ENVIRONMENT, APT_PROXY)
ENGINE_FILE = "/etc/devenv/engine"
READY_UNIT = "/etc/systemd/system/devenv-ready.service"
PROVISION_UNIT = "/etc/systemd/system/devenv-provision.service"
AGENT_SOCKET_UNIT = "/etc/systemd/system/devenv-guestagent.socket"
AGENT_SERVICE_UNIT = "/etc/systemd/system/devenv-guestagent.service"
RELAY_UNIT = "/etc/systemd/system/devenv-relay.service"
RELAY_PATH = f"{LIB}/relay.py"
RECLAIM_SERVICE = "/etc/systemd/system/devenv-reclaim.service"
RECLAIM_TIMER = "/etc/systemd/system/devenv-reclaim.timer"
MOUNTS_UNIT = "/etc/systemd/system/devenv-mounts.service"
MOUNTS_PATH = f"{LIB}/mounts.sh"
STATE_DIR = "/var/lib/devenv"
PROVISION_LOG = "/var/log/devenv-provision.log"
READY_LINE = "DEVENV-READY"
FAILED_PREFIX = "DEVENV-FAILED"

# Characters YAML would fold, reject or read as a line break inside a double-quoted scalar.
_YAML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_ENV_FORBIDDEN = re.compile(r'["\\\n\r\x00]')


def yaml_str(value: str) -> str:
    """`value` as a YAML double-quoted scalar that any YAML 1.1/1.2 parser reads back exactly."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in _YAML_ESCAPES:
            out.append(_YAML_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError("text contains a lone surrogate, which is not valid UTF-8")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: str
    permissions: str = "0644"
    append: bool = False

    def render(self) -> str:
        lines = [
            f"  - path: {yaml_str(self.path)}",
            "    owner: root:root",
            f'    permissions: "{self.permissions}"',
        ]
        if self.append:
            lines.append("    append: true")
        lines.append(f"    content: {yaml_str(self.content)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class SeedInputs:
    """Everything user-data depends on, so it can be rendered (and tested) without touching the host."""

    name: str
    runtime: str
    authorized_key: str
    host_private_key: str
    host_public_key: str
    env: Mapping[str, str] = field(default_factory=dict)
    provision: tuple[Provision, ...] = ()
    timezone: str | None = None
    proxies: Mapping[str, str] = field(default_factory=dict)
    uid: int = GUEST_UID


def inputs_for(
    cfg: Config,
    keys: InstanceKeys,
    *,
    environ: Mapping[str, str],
    host_address: str | None = None,
    root: Path = Path("/"),
) -> SeedInputs:
    return SeedInputs(
        name=cfg.name,
        runtime=cfg.runtime,
        authorized_key=keys.client_public,
        host_private_key=keys.host_key.read_text(encoding="utf-8"),
        host_public_key=keys.host_public,
        env=dict(cfg.env),
        provision=cfg.provision,
        timezone=hostenv.host_timezone(root),
        proxies=hostenv.host_proxies(environ, host_address),
        uid=guest_uid(),
    )


def guest_uid(host_uid: int | None = None) -> int:
    """The guest user's uid: the host user's, so files on a 9p share have the right owner.

    As with Lima, a file the host user owns is owned by the guest user too. Host
    uids outside the ordinary range (root, nobody, Windows without getuid) keep 1000.
    """
    if host_uid is None:
        getuid = getattr(os, "getuid", None)
        host_uid = getuid() if getuid is not None else GUEST_UID
    return host_uid if 500 <= host_uid < 60000 else GUEST_UID


def guest_hostname(name: str) -> str:
    """Instance names may hold '.' and '_', which a hostname label may not."""
    label = re.sub(r"[^A-Za-z0-9-]", "-", name).strip("-")[:63].strip("-")
    return label or "devenv"


def instance_id(name: str, host_public_key: str) -> str:
    """Stable while the instance lives; new when it is re-created (new host key), so
    cloud-init runs its once-per-instance steps exactly once per instance."""
    blob = host_public_key.split()[1].encode()
    return f"devenv-{guest_hostname(name)}-{hashlib.sha256(blob).hexdigest()[:12]}"


def render_meta_data(name: str, host_public_key: str) -> str:
    template = Template(assets.read_text("cloud-init/meta-data.yaml"))
    return template.substitute(
        instance_id=yaml_str(instance_id(name, host_public_key)), hostname=yaml_str(guest_hostname(name))
    )


def _check_env(items: Iterable[tuple[str, str]], where: str) -> None:
    problems = [
        f"{where} `{key}` must not contain a double quote, backslash, newline or NUL (/etc/environment cannot hold it)"
        for key, value in items
        if _ENV_FORBIDDEN.search(value)
    ]
    if problems:
        raise ConfigError(problems)


def guest_environment(inputs: SeedInputs) -> dict[str, str]:
    """Proxy variables (both spellings, as tools disagree) and then the config's env, which wins."""
    out: dict[str, str] = {}
    for var, value in inputs.proxies.items():
        if var not in inputs.env and var.lower() not in inputs.env:
            out[var] = value
            out[var.lower()] = value
    out.update(inputs.env)
    return out


def _write_files(inputs: SeedInputs) -> list[WriteFile]:
    engine = engines.engine(inputs.runtime)
    _check_env(inputs.env.items(), "field `env`: variable")
    _check_env(inputs.proxies.items(), "host proxy variable")
    env = guest_environment(inputs)
    files = [
        WriteFile(FIRSTBOOT, assets.read_text("cloud-init/firstboot.sh"), "0755"),
        WriteFile(f"{LIB}/engines/common.sh", assets.read_text("engines/common.sh")),
        WriteFile(f"{LIB}/engines/busybox.sh", assets.read_text("engines/busybox.sh")),
        WriteFile(engine.guest_script, assets.read_text(f"engines/{engine.script}"), "0755"),
        WriteFile(protocol.GUEST_PATH, protocol.agent_source().decode("utf-8"), "0755"),
        WriteFile(READY_UNIT, assets.read_text("systemd/devenv-ready.service")),
        WriteFile(AGENT_SOCKET_UNIT, assets.read_text("systemd/devenv-guestagent.socket")),
        WriteFile(AGENT_SERVICE_UNIT, assets.read_text("systemd/devenv-guestagent.service")),
        WriteFile(RELAY_PATH, relay_source(), "0755"),
        WriteFile(RELAY_UNIT, assets.read_text("systemd/devenv-relay.service")),
        WriteFile(f"{LIB}/reclaim.sh", assets.read_text("guest/reclaim.sh"), "0755"),
        WriteFile(MOUNTS_PATH, assets.read_text("guest/mounts.sh"), "0755"),
        WriteFile(MOUNTS_UNIT, assets.read_text("systemd/devenv-mounts.service")),
        WriteFile(f"{LIB}/install-missing.sh", assets.read_text("guest/install-missing.sh"), "0755"),
        WriteFile(RECLAIM_SERVICE, assets.read_text("systemd/devenv-reclaim.service")),
        WriteFile(RECLAIM_TIMER, assets.read_text("systemd/devenv-reclaim.timer")),
        WriteFile(ENGINE_FILE, f"{engine.name}\n"),
        WriteFile(ENV_SH, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()), "0600"),
    ]
    if env:
        lines = "".join(f'{k}="{v}"\n' for k, v in env.items())
        files.append(WriteFile(ENVIRONMENT, lines, "0600", append=True))
    proxies = {k: v for k, v in env.items() if k in hostenv.PROXY_VARS}
    if proxies:
        apt = []
        for scheme in ("http", "https"):
            url = proxies.get(f"{scheme.upper()}_PROXY")
            if url:
                apt.append(f'Acquire::{scheme}::Proxy "{url}";\n')
        if apt:
            files.append(WriteFile(APT_PROXY, "".join(apt), "0600"))
        dropin = "[Service]\n" + "".join(f'Environment="{_systemd_escape(f"{k}={v}")}"\n' for k, v in proxies.items())
        # read by systemd as root: nobody else needs them
        files += [
            WriteFile(f"/etc/systemd/system/{unit}.d/10-devenv-proxy.conf", dropin, "0600") for unit in engine.units
        ]
    width = max(2, len(str(len(inputs.provision))))
    for number, prov in enumerate(inputs.provision, start=1):
        script = prov.script if prov.script.endswith("\n") else prov.script + "\n"
        files.append(WriteFile(provision_path(number, prov.mode, width), script, "0755"))
    return files


def relay_source() -> str:
    """The guest end of the SSH relay (stdlib only; runs in the guest as root)."""
    from devenv.guestagent import relay

    return Path(relay.__file__).read_text(encoding="utf-8")


def provision_path(number: int, mode: str, width: int = 2) -> str:
    """firstboot.sh runs these in name order; the suffix says as whom (-system: root, -user: devenv)."""
    return f"{LIB}/provision/{number:0{width}d}-{mode}.sh"


def _systemd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def render_user_data(inputs: SeedInputs) -> str:
    template = Template(assets.read_text("cloud-init/user-data.yaml"))
    timezone = (
        f"timezone: {yaml_str(inputs.timezone)}"
        if inputs.timezone
        else "# timezone: unknown on the host; the guest keeps UTC"
    )
    return template.substitute(
        name=inputs.name,
        uid=str(inputs.uid),
        authorized_key=yaml_str(inputs.authorized_key),
        host_private_key=yaml_str(inputs.host_private_key),
        host_public_key=yaml_str(inputs.host_public_key),
        timezone=timezone,
        write_files="\n".join(f.render() for f in _write_files(inputs)),
        firstboot=FIRSTBOOT,
    )


def render_devenv_seed(inputs: SeedInputs) -> str:
    """devenv-seed.json: the same first boot as render_user_data, for devenv/provision/earlyboot.py.

    Images devenv built have no cloud-init: their devenv-seed.service runs
    earlyboot.py from the seed on this file. Same user, keys, host key, files
    and first-boot script as the user-data, plus the unit that runs the part
    of firstboot.sh which needs the network.
    """
    files = [*_write_files(inputs), WriteFile(PROVISION_UNIT, assets.read_text("systemd/devenv-provision.service"))]
    seed = {
        "version": 1,
        "instance_id": instance_id(inputs.name, inputs.host_public_key),
        "hostname": guest_hostname(inputs.name),
        "timezone": inputs.timezone,
        "user": {
            "name": "devenv",
            "uid": inputs.uid,
            "authorized_keys": [inputs.authorized_key],
            "groups": [engines.engine(inputs.runtime).group],
        },
        "host_key": {"private": inputs.host_private_key, "public": inputs.host_public_key},
        "files": [
            {"path": f.path, "content": f.content, "permissions": f.permissions, "append": f.append} for f in files
        ],
        "agent": protocol.GUEST_PATH,
        "firstboot": FIRSTBOOT,
        # enabled for every later boot; started now (in one systemctl run), the boot's transaction began without them
        "units": {"enable": [unit_name(u) for u in BOOT_UNITS], "start": [unit_name(u) for u in STARTED_UNITS]},
    }
    return json.dumps(seed, indent=1, ensure_ascii=False) + "\n"


# What firstboot.sh enables on a pulled image (cloud-init) and earlyboot.py on an image devenv built.
BOOT_UNITS = (READY_UNIT, AGENT_SOCKET_UNIT, AGENT_SERVICE_UNIT, MOUNTS_UNIT, RELAY_UNIT, RECLAIM_TIMER, PROVISION_UNIT)
# devenv-ready: later boots only. The guest agent's service is started now, so that its Python has started
# by the time the host logs in, after provisioning (it restarts itself if provisioning changes its environment).
STARTED_UNITS = (AGENT_SOCKET_UNIT, AGENT_SERVICE_UNIT, MOUNTS_UNIT, RELAY_UNIT, RECLAIM_TIMER, PROVISION_UNIT)


def unit_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def earlyboot_source() -> str:
    """The program devenv-seed.service runs from the seed (stdlib only; runs in the guest)."""
    return (Path(__file__).resolve().parent / "earlyboot.py").read_text(encoding="utf-8")
