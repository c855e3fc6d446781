"""The instance's seed: an ISO 9660 image labelled `cidata`.

It holds two first boots from the same inputs: cloud-init's NoCloud files
(user-data, meta-data) for pulled cloud images, and devenv's own
(devenv-seed.json and the devenv-earlyboot.py that applies it) for images
devenv built, which have no cloud-init (devenv/provision/earlyboot.py says why).

Written in pure Python with pycdlib, so no host needs genisoimage, mkisofs or
hdiutil. Each file has an 8.3-safe ISO 9660 name plus its real name in Rock
Ridge (what Linux reads) and Joliet (what Windows and macOS show).

No network-config is written: the image configures its own DHCP on the first
NIC, and a network-config whose renderer the image lacks would break boot.
build_seed_iso() accepts one for backends that need it.

The ISO holds the guest's private host key, so it is written 0600 and
atomically (a half-written seed would boot a guest without keys).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devenv import paths
from devenv.atomicfile import write_atomic
from devenv.config import Config
from devenv.errors import ConfigError
from devenv.provision import keys as keys_mod
from devenv.provision import userdata

SEED_LABEL = "cidata"
SEED_FILES = {
    "user-data": "/USER_DATA.;1",
    "meta-data": "/META_DATA.;1",
    "network-config": "/NETWORK_CONFIG.;1",
    "vendor-data": "/VENDOR_DATA.;1",
    "devenv-seed.json": "/DEVENV_SEED.JSON;1",
    "devenv-earlyboot.py": "/DEVENV_EARLYBOOT.PY;1",
}


def build_seed_iso(path: Path, files: Mapping[str, bytes | str]) -> None:
    """Write a seed with `files` (names from SEED_FILES) to `path`, mode 0600."""
    import pycdlib

    unknown = sorted(set(files) - set(SEED_FILES))
    if unknown:
        raise ValueError(f"not a seed file: {', '.join(unknown)}")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    try:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            iso.add_fp(io.BytesIO(data), len(data), SEED_FILES[name], rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()  # a seed is a few KiB
        iso.write_fp(out)
        write_atomic(path, out.getvalue(), 0o600)
    finally:
        iso.close()


@dataclass(frozen=True)
class SeedImage:
    label: str
    files: dict[str, bytes]  # by Rock Ridge name
    joliet_names: tuple[str, ...]


def read_seed_iso(path: Path) -> SeedImage:
    """Read a seed back (tests, `devenv debug`): the label and every file by its Rock Ridge name."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().rstrip(" \x00")
        files: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot() or not child.is_file():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            files[name] = buf.getvalue()
        joliet = []
        for child in iso.list_children(joliet_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            joliet.append(child.file_identifier().decode("utf-16-be"))
        return SeedImage(label=label, files=files, joliet_names=tuple(sorted(joliet)))
    finally:
        iso.close()


@dataclass(frozen=True)
class SeedResult:
    iso: Path
    keys: keys_mod.InstanceKeys
    instance_id: str
    hostname: str


def prepare_seed(
    instance_dir: Path,
    cfg: Config,
    *,
    host_address: str | None = None,
    environ: Mapping[str, str] | None = None,
    root: Path = Path("/"),
) -> SeedResult:
    """Make the instance's keys (kept if they exist) and (re)write its cidata ISO.

    Safe to call on every start: the instance-id stays the same, so cloud-init
    does not provision again; a changed config only affects per-boot steps.
    `host_address` is how the guest reaches the host (QEMU user networking:
    10.0.2.2); host proxies on 127.0.0.1 are rewritten to it.
    """
    paths.ensure_private_dir(instance_dir)
    keys = keys_mod.ensure_keys(instance_dir, cfg.name)
    inputs = userdata.inputs_for(
        cfg, keys, environ=os.environ if environ is None else environ, host_address=host_address, root=root
    )
    try:
        files = {
            "user-data": userdata.render_user_data(inputs),
            "meta-data": userdata.render_meta_data(cfg.name, keys.host_public),
            "devenv-seed.json": userdata.render_devenv_seed(inputs),
            "devenv-earlyboot.py": userdata.earlyboot_source(),
        }
    except ValueError as e:  # text that cannot be written as UTF-8 (a lone surrogate from undecodable bytes)
        raise ConfigError(
            [f"cannot write the first-boot seed for `{cfg.name}`: {e}"],
            "a value from devenv.toml, a provision script or the host (git identity, time zone) is not valid "
            "UTF-8; fix it and run `devenv start` again",
        ) from None
    iso = instance_dir / paths.CIDATA
    build_seed_iso(iso, files)
    return SeedResult(
        iso=iso,
        keys=keys,
        instance_id=userdata.instance_id(cfg.name, keys.host_public),
        hostname=userdata.guest_hostname(cfg.name),
    )
